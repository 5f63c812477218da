"""consumer.worker.Worker.step: how long a poll waits with a batch in hand, and when an empty poll means the
consumer has caught up."""

from __future__ import annotations

import pytest

from consumer.config import ConsumerConfig
from consumer.worker import Worker
from schemas import envelope
from schemas.queue import Message, Subscriber


class ScriptedSubscriber(Subscriber):
    """A stand-in queue that answers polls from a script and records each poll's timeout (the worker's
    decision under test; the real queues' at_end() is tested in test_queue_contract.py)."""

    def __init__(self, answers: list[list[Message]], at_end: bool):
        self.answers, self.end, self.timeouts = answers, at_end, []

    def poll(self, max_messages, timeout):
        self.timeouts.append(timeout)
        return self.answers.pop(0) if self.answers else []

    def commit(self, offsets):
        pass

    def assignment(self):
        return {0}

    def at_end(self):
        return self.end


class Flushed(Exception):
    """Raised by NoFlush (not a failure the worker waits out: consumer/transient.py)."""


class NoFlush:
    def prefetch(self, keys):
        raise Flushed()


def message() -> Message:
    event = {
        "event_id": "evt_1",
        "event": "paywall_viewed",
        "user_id": None,
        "anonymous_id": "d",
        "timestamp": "2024-03-15T14:22:00.000Z",
        "properties": {},
    }
    return Message(0, 0, envelope.encode_records("acme", "2024-03-15T14:22:01.000Z", [event])[0])


def worker_after_steps(at_end: bool, second_step_at: float) -> tuple[Worker, ScriptedSubscriber]:
    """A worker (batches of at most 1 s) whose first step polls one message at t=100 and whose second
    step, at `second_step_at`, polls nothing."""
    now = [100.0]
    subscriber = ScriptedSubscriber([[message()]], at_end)
    config = ConsumerConfig(
        batch_max_events=90_000,
        batch_max_seconds=1.0,
        writes=1,
        database="flokit",
        topic="flokit.events",
        dead_letter_timeout_seconds=5.0,
    )
    # Nothing may be written: a flush starts with the identity lookups, which stop the test here.
    worker = Worker(
        config,
        lambda on_revoke: subscriber,
        writers=[object()],
        dead_letters=None,
        identity=NoFlush(),
        clock=lambda: now[0],
    )
    worker.step()
    now[0] = second_step_at
    worker.step()
    return worker, subscriber


def test_a_poll_waits_half_a_second_at_the_end_of_the_queue_too():
    # Reaching the end of the queue on every poll is what a steady stream looks like too: only half a
    # second without a message tells the end of a burst (the second poll: the batch is 0.1 s old).
    for at_end in (True, False):
        assert worker_after_steps(at_end, second_step_at=100.1)[1].timeouts == [0.5, 0.5]


def test_an_empty_poll_with_messages_still_there_is_not_caught_up():
    # 0.3 s old: a caught-up batch would be due (a quarter of 1 s); a slow fetch is not the end of a backlog.
    worker, _ = worker_after_steps(at_end=False, second_step_at=100.3)
    assert worker._batch.events == 1  # still in hand: not flushed (NoFlush would have raised)


def test_an_empty_poll_at_the_end_is_caught_up():
    with pytest.raises(Flushed):
        worker_after_steps(at_end=True, second_step_at=100.3)
