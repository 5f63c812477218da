"""Handing accepted events to the queue: grouped into one record per partition,
published, and acknowledged before the caller may answer 200."""
from __future__ import annotations

import logging

from deploy.queue.base import Publisher, QueueUnavailable, Record
from schemas import envelope

from .errors import ServiceUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def publish(publisher: Publisher, workspace: str, received_at: str, events: list[dict], timeout: float) -> None:
    """Durably enqueue `events` (each with its event_id) or raise ServiceUnavailable."""
    try:
        partitions = publisher.partition_count()
        groups: dict[int, list[dict]] = {}
        for event in events:
            groups.setdefault(envelope.partition_for(envelope.partition_key(event), partitions), []).append(event)
        records = [Record(partition, value)
                   for partition, group in groups.items()
                   for value in envelope.encode_records(workspace, received_at, group)]
        publisher.publish(records, timeout)
    except QueueUnavailable as exc:
        log.warning("enqueue failed: %s", exc)  # the detail names internal hosts: logged, not returned
        raise ServiceUnavailable("queue_unavailable",
                                 "the event queue did not accept the events in time; nothing was accepted, retry later",
                                 headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from exc
