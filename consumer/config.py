"""What a consumer worker needs to know, and nothing else: deploy builds it from its settings
(deploy/components.py), tests build it directly."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConsumerConfig:
    # The largest batch, in events (one insert each), and how long a batch may wait before it is written.
    batch_max_events: int
    batch_max_seconds: float
    # Batches written to the warehouse at once: one writer, with its own warehouse client, each.
    writes: int
    # The warehouse database the writers insert into and identities are looked up in.
    database: str
    # The topic consumed: dead letters name it as where they came from.
    topic: str
    # How long a dead letter may take to be durably published before the attempt counts as failed (retried).
    dead_letter_timeout_seconds: float
