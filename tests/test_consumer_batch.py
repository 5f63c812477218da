"""consumer.batch: when a batch in hand is written."""

from __future__ import annotations

from consumer.batch import Batch, BatchSizes
from consumer.decode import decode
from schemas import envelope
from schemas.queue import Message


def message(offset: int, events: int) -> Message:
    evs = [
        {
            "event_id": f"evt_{offset}_{i}",
            "event": "paywall_viewed",
            "user_id": None,
            "anonymous_id": "d",
            "timestamp": "2024-03-15T14:22:00.000Z",
            "properties": {},
        }
        for i in range(events)
    ]
    return Message(0, offset, envelope.encode_records("acme", "2024-03-15T14:22:01.000Z", evs)[0])


def test_due_when_full_or_old_or_caught_up_and_a_quarter_old():
    batch = Batch(max_events=10, max_seconds=1.0)
    assert not batch.due(100.0) and not batch.due(100.0, caught_up=True)  # empty: never
    batch.add(decode(message(0, 4)), now=100.0)
    assert not batch.due(100.2) and not batch.due(100.2, caught_up=True)
    assert batch.due(100.25, caught_up=True) and not batch.due(100.25)
    assert batch.due(101.0)
    batch.add(decode(message(1, 6)), now=100.1)
    assert batch.events == 10 and batch.due(100.1) and batch.next_offsets == {0: 2}


def test_batch_sizes_start_at_a_quarter_double_when_full_and_reset_when_caught_up():
    sizes = BatchSizes(largest=100)
    assert sizes.next == 25  # at start: the first insert does not wait for a whole batch

    def flushed(events: int, caught_up: bool = False) -> int:
        batch = Batch(max_events=sizes.next, max_seconds=1.0)
        for offset in range(events):
            batch.add(decode(message(offset, 1)), now=100.0)
        sizes.flushed(batch, caught_up)
        return sizes.next

    assert [flushed(25), flushed(50), flushed(100), flushed(100)] == [50, 100, 100, 100]
    assert flushed(60) == 100  # written by age, not full: the size stays
    assert flushed(30, caught_up=True) == 25  # the queue ran dry: the next burst starts small again
    assert BatchSizes(largest=2).next == 1
