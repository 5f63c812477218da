"""Handing accepted events to the queue: the events of the requests a worker
holds at once are grouped into one record per workspace and partition,
published, and acknowledged before any of those requests may answer 200."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from schemas import envelope
from schemas.queue import Publisher, QueueUnavailable, Record

from .coalesce import Coalescer, DeadlinePassed
from .errors import RETRY_AFTER_SECONDS, ServiceUnavailable

log = logging.getLogger(__name__)

# Publishes in flight at once per worker. A publish waits for the queue's acknowledgement (Kafka's round
# trip); whatever arrives meanwhile goes out together in the next one (group commit). One at a time groups
# more than several did, for the same CPU: lower latency below saturation, the same batch throughput
# (bench/README.md).
PUBLISHERS = 1


class Enqueuer:
    def __init__(self, publisher: Publisher, timeout: float):
        self._publisher = publisher
        self._timeout = timeout
        self._requests = Coalescer(self._publish, "enqueue", flushers=PUBLISHERS)

    def publish(
        self, workspace: str, received_at: str, events: list[dict[str, Any]], deadline: float | None = None
    ) -> None:
        """Durably enqueue `events` (each with its event_id) by `deadline` (time.monotonic(); by default the
        enqueue timeout from now), or raise ServiceUnavailable."""
        if deadline is None:
            deadline = time.monotonic() + self._timeout
        try:
            self._requests.submit((workspace, received_at, events), deadline)
        except DeadlinePassed as exc:
            # Withdrawn before a flush took them, none of them ever reaches the queue; else their publish is
            # under way.
            raise _unavailable(NOT_QUEUED if exc.withdrawn else MAY_ARRIVE) from exc
        except QueueUnavailable as exc:
            log.warning("enqueue failed: %s", exc)  # the detail names internal hosts: logged, not returned
            raise _unavailable(MAY_ARRIVE) from exc

    def _publish(self, requests: list[tuple[str, str, list[dict[str, Any]]]]) -> list[None]:
        # One answer for all: if any record is not acknowledged, every request of the flush gets a 503 (never
        # a 200 for an event that may be lost). The queue gets the whole enqueue timeout, whatever is left of
        # each request's own: a request whose deadline comes first is answered then (Coalescer.submit) without
        # cutting the others' wait short, and a publish fails only when the queue did not take the records.
        self._publisher.publish(records_for(requests, self._publisher.partition_count()), self._timeout)
        return [None] * len(requests)


NOT_QUEUED = "the event queue did not take the events in time; none of them was queued, retry later"
MAY_ARRIVE = (
    "the event queue did not acknowledge the events in time: they are not accepted, but may still arrive."
    " A retry with the same Idempotency-Key counts none of them twice; without one, a retry may count"
    " some twice"
)


def _unavailable(message: str) -> ServiceUnavailable:
    return ServiceUnavailable("queue_unavailable", message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def records_for(requests: Sequence[tuple[str, str, list[dict[str, Any]]]], partitions: int) -> list[Record]:
    """The records of several requests' events: one (or more, if large) per workspace and partition, each
    event keeping its own request's received_at, in request order within a partition."""
    groups: dict[tuple[str, int], tuple[list[str], list[dict[str, Any]]]] = {}
    for workspace, received_at, events in requests:
        for event in events:
            times, grouped = groups.setdefault(
                (workspace, envelope.partition_for(envelope.partition_key(event), partitions)), ([], [])
            )
            times.append(received_at)
            grouped.append(event)
    return [
        Record(partition, value)
        for (workspace, partition), (times, grouped) in groups.items()
        for value in envelope.encode_records(workspace, times, grouped)
    ]
