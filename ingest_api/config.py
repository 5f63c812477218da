"""What the front door's handlers read of the configuration, as one small value of its own.

The deployment builds it from its settings (deploy/components.py); ingest_api never reads the environment
itself, so it can be built and tested with any values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FrontDoorConfig:
    # Requests per minute of a workspace that has no limit of its own.
    rate_limit_per_minute: int = 100
    # Every wait of a request (the shared state's answers, the queue's acknowledgement) ends by then.
    enqueue_timeout_seconds: float = 5.0
    # The largest request body, as sent and once decompressed.
    max_body_bytes: int = 8 * 1024 * 1024
