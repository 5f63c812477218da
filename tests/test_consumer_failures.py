"""consumer.worker: which failures the worker waits out and which stop it (consumer/transient.py).

The worker runs on a real local log; its writer is a stand-in that raises, since a bug in the write path
or a chosen ClickHouse error cannot be produced on demand from the real one (the real warehouse going away
and coming back is tests/test_consumer_e2e.py's test_warehouse_down_then_up_loses_nothing)."""

from __future__ import annotations

import threading
import time

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from consumer.config import ConsumerConfig
from consumer.dead_letters import DeadLetters
from consumer.identity import IdentityCache
from consumer.transient import is_transient
from consumer.worker import Worker
from deploy.queue.local_log import LocalLogPublisher, LocalLogSubscriber
from schemas import envelope
from schemas.queue import QueueUnavailable, Record

CONFIG = ConsumerConfig(
    batch_max_events=1000,
    batch_max_seconds=0.2,
    writes=1,
    database="flokit",
    topic="flokit.events",
    dead_letter_timeout_seconds=5.0,
)


class FailingWriter:
    """Raises each of `failures` in turn on write(), then `always` on every call if given, else stores
    (counts) what it is given."""

    def __init__(self, *failures: BaseException, always: BaseException | None = None):
        self.failures, self.always, self.calls, self.written = list(failures), always, 0, 0

    def write(self, table, columns, body, token) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if self.always is not None:
            raise self.always
        if table == "events":
            self.written += sum(len(bytes(piece)) for piece in body)


def queue_with_one_event(tmp_path) -> object:
    path = tmp_path / "queue.sqlite3"
    event = {
        "event_id": "evt_1",
        "event": "paywall_viewed",
        "user_id": "usr_1",
        "anonymous_id": None,
        "timestamp": "2024-03-15T14:22:00.000Z",
        "properties": {},
    }
    publisher = LocalLogPublisher(path, 1, 5)
    publisher.publish(
        [Record(0, v) for v in envelope.encode_records("acme", "2024-03-15T14:22:01.000Z", [event])], 5
    )
    publisher.close()
    return path


def start_worker(tmp_path, path, writer) -> tuple[Worker, threading.Thread, list[BaseException]]:
    dead_letters = DeadLetters(LocalLogPublisher(tmp_path / "dead_letters.sqlite3", 1, 5), "flokit.events", 5)
    worker = Worker(
        CONFIG,
        lambda on_revoke: LocalLogSubscriber(path, "consumers", on_revoke),
        [writer],
        dead_letters,
        IdentityCache(lambda pairs: {}),
    )
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 — what run() raised is the test's subject
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return worker, thread, raised


def test_a_bug_in_the_write_path_stops_the_worker_and_commits_nothing(tmp_path):
    path = queue_with_one_event(tmp_path)
    writer = FailingWriter(always=TypeError("a bug"))
    worker, thread, raised = start_worker(tmp_path, path, writer)
    thread.join(timeout=30)
    if thread.is_alive():  # the old behaviour: retried every 0.5-30 s, forever
        worker.stop()
        thread.join(timeout=60)
        pytest.fail(f"the worker kept retrying a TypeError ({writer.calls} attempts) instead of stopping")
    assert len(raised) == 1 and isinstance(raised[0], TypeError) and writer.calls == 1
    # Nothing was committed: the next member of the group gets the event again.
    again = LocalLogSubscriber(path, "consumers")
    try:
        assert [(m.partition, m.offset) for m in again.poll(10, 1.0)] == [(0, 0)]
    finally:
        again.close()


def test_an_unavailable_warehouse_is_waited_out_then_the_batch_committed(tmp_path):
    path = queue_with_one_event(tmp_path)
    writer = FailingWriter(
        OperationalError("Network Error"), DatabaseError("Code: 241. MEMORY_LIMIT_EXCEEDED", code=241)
    )
    worker, thread, raised = start_worker(tmp_path, path, writer)
    try:
        for _ in range(120):  # backoff 0.5 s, then 1 s
            if writer.written:
                break
            time.sleep(0.25)
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert writer.written > 0 and raised == [] and writer.calls == 4  # two failures, then links and events
    again = LocalLogSubscriber(path, "consumers")
    try:
        assert again.poll(10, 0.5) == []  # committed
    finally:
        again.close()


@pytest.mark.parametrize(
    "exc, transient",
    [
        (
            OperationalError("Network Error"),
            True,
        ),  # unreachable, connection lost (clickhouse-connect's wording)
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (QueueUnavailable("Kafka did not acknowledge"), True),
        (
            DatabaseError("Code: 60. UNKNOWN_TABLE", code=60),
            True,
        ),  # the server about itself: migrate not run yet
        (DatabaseError("Code: 252. TOO_MANY_PARTS", code=252), True),
        (DatabaseError("Code: 27. CANNOT_PARSE_INPUT_ASSERTION_FAILED", code=27), False),  # about the rows
        (ProgrammingError("the client called wrongly"), False),
        (TypeError("a bug"), False),
        (KeyError("a bug"), False),
    ],
)
def test_what_is_transient(exc, transient):
    assert is_transient(exc) is transient
