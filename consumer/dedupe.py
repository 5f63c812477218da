"""A bounded set of the event ids a worker wrote recently.

It drops copies this worker has already written (redelivery after a crash
or rebalance that comes back to the same worker, a retried request whose first
attempt did reach the queue) before they cost an insert. It is an
optimisation; correctness comes from the table's ReplacingMergeTree key and
the FINAL views, which hide any copy that gets past it.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice


class RecentIds:
    # A little more than a batch of the largest size (FLOKIT_BATCH_MAX_EVENTS, 90,000 by default), a second or
    # more of ingest: the copies it is for come back within seconds. Every id it holds costs ~120 bytes of
    # the consumer's memory.
    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._ids: dict[str, None] = {}  # insertion-ordered: the oldest go first

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add_all(self, event_ids: Iterable[str]) -> None:
        ids = self._ids
        for event_id in event_ids:
            ids[event_id] = None
        overflow = len(ids) - self._capacity
        if overflow > 0:
            for stale in list(islice(ids, overflow)):
                del ids[stale]
