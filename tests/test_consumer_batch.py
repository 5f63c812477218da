"""consumer.batch: when a batch in hand is written."""
from __future__ import annotations

from consumer.batch import Batch
from consumer.decode import decode
from deploy.queue.base import Message
from schemas import envelope


def message(offset: int, events: int) -> Message:
    evs = [{"event_id": f"evt_{offset}_{i}", "event": "paywall_viewed", "user_id": None, "anonymous_id": "d",
            "timestamp": "2024-03-15T14:22:00.000Z", "properties": {}} for i in range(events)]
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
