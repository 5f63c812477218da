"""A batch in hand: the messages polled since the last flush, the offsets to
commit once they are written, and when the batch is due."""

from __future__ import annotations

from dataclasses import dataclass, field

from .decode import Decoded, Undecodable


@dataclass
class Batch:
    max_events: int
    max_seconds: float
    decoded: list[Decoded] = field(default_factory=list)
    undecodable: list[Undecodable] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partition → offset to commit
    events: int = 0
    started_at: float | None = None

    def add(self, item: Decoded | Undecodable, now: float) -> None:
        if self.started_at is None:
            self.started_at = now
        if isinstance(item, Decoded):
            self.decoded.append(item)
            self.events += len(item.envelope.refs)
        else:
            self.undecodable.append(item)
        message = item.message
        # The committable offset is the next one to read (Kafka's convention).
        self.next_offsets[message.partition] = max(
            self.next_offsets.get(message.partition, 0), message.offset + 1
        )

    def empty(self) -> bool:
        return not self.next_offsets

    def full(self) -> bool:
        return self.events >= self.max_events

    def due(self, now: float, caught_up: bool = False) -> bool:
        """Full, or max_seconds old; or, once the queue has nothing more for now (`caught_up`), a quarter
        of that: a consumer that has caught up does not sit on events, yet a trickle of events still
        makes at most a few inserts a second (ClickHouse prefers few, large inserts)."""
        if self.started_at is None:  # empty: nothing added yet
            return False
        age = now - self.started_at
        return self.full() or age >= self.max_seconds or (caught_up and age >= self.max_seconds / 4)

    def seconds_left(self, now: float) -> float:
        return (
            self.max_seconds
            if self.started_at is None
            else max(0.0, self.started_at + self.max_seconds - now)
        )


class BatchSizes:
    """How many events the next batch may hold. After the queue ran dry (and at start) a quarter of the
    largest; each batch that fills doubles it, up to the largest. So a burst's first insert starts after a
    quarter of the polling instead of leaving the warehouse idle while a whole batch is polled, and a
    sustained stream still gets the largest, cheapest-per-row inserts."""

    def __init__(self, largest: int):
        self.largest = largest
        self.next = self._first()

    def _first(self) -> int:
        return max(1, self.largest // 4)

    def flushed(self, batch: Batch, caught_up: bool) -> None:
        if caught_up:
            self.next = self._first()
        elif batch.full():
            self.next = min(self.largest, 2 * self.next)
