"""One contract, two queues: Kafka (production, a real broker) and the local log
(embedded mode) must behave the same behind schemas.queue. Each test runs
against both, on a fresh topic (Kafka) or file (local) and fresh group ids.

Consumer-group membership between several Kafka subscribers is the consumer's
tests' business, beyond how revocation is delivered (the last test); elsewhere
every group has one member at a time.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import pytest
from kafka.net.transport import KafkaTCPTransport

from deploy.queue import kafka_recv
from deploy.queue.kafka_queue import KafkaPublisher, KafkaSubscriber, create_topics
from deploy.queue.local_log import LocalLogPublisher, LocalLogSubscriber
from schemas.queue import GroupBusy, Message, Record

from .services import unique

PARTITIONS = 4


class Backend:
    """Makes publishers and subscribers on one fresh queue, and closes them all."""

    def __init__(self, name: str, make_publisher, make_subscriber, large_reads: bool = False):
        self.name = name
        self.large_reads = large_reads  # Kafka: the position of FLOKIT_KAFKA_LARGE_READS
        self._make_publisher = make_publisher
        self._make_subscriber = make_subscriber
        self._opened = []

    def publisher(self):
        pub = self._make_publisher()
        self._opened.append(pub)
        deadline = time.monotonic() + 20
        while True:  # a topic just created takes a moment to appear in the metadata
            try:
                assert pub.partition_count() == PARTITIONS
                return pub
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def subscriber(self, group: str, on_revoke=None):
        sub = self._make_subscriber(group, on_revoke)
        self._opened.append(sub)
        return sub

    def close(self, thing) -> None:
        thing.close()
        self._opened.remove(thing)

    def close_all(self) -> None:
        for thing in reversed(self._opened):
            thing.close()


@pytest.fixture(params=["kafka", "kafka large reads", "local"])
def backend(request, tmp_path):
    """Kafka in both positions of FLOKIT_KAFKA_LARGE_READS (deploy/queue/kafka_recv.py), and the local log."""
    if request.param.startswith("kafka"):
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        topic = unique("contract")
        create_topics(bootstrap, {topic: PARTITIONS})
        large = request.param == "kafka large reads"
        b = Backend(
            "kafka",
            lambda: KafkaPublisher(bootstrap, topic, 10),
            lambda group, on_revoke: KafkaSubscriber(
                bootstrap, topic, group, on_revoke=on_revoke, large_reads=large
            ),
            large,
        )
    else:
        path = tmp_path / "queue.sqlite3"
        b = Backend(
            "local",
            lambda: LocalLogPublisher(path, PARTITIONS, 5),
            lambda group, on_revoke: LocalLogSubscriber(path, group, on_revoke),
        )
    yield b
    b.close_all()
    kafka_recv.use_large_reads(False)


def drain(sub, expected: int, timeout: float = 20.0, settle: float = 0.5) -> list[Message]:
    """Poll until `expected` messages arrived, then once more for `settle`
    seconds to catch any extra (a duplicate or a message that should not come)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got += sub.poll(1000, 0.5)
    got += sub.poll(1000, settle)
    return got


def wait_assigned(sub, timeout: float = 20.0) -> None:
    """Poll (nothing is there yet) until the subscriber owns every partition."""
    deadline = time.monotonic() + timeout
    while sub.assignment() != set(range(PARTITIONS)):
        assert time.monotonic() < deadline, f"not assigned all partitions: {sub.assignment()}"
        assert sub.poll(100, 0.2) == []


def by_partition(messages: list[Message]) -> dict[int, list[Message]]:
    out: dict[int, list[Message]] = defaultdict(list)
    for m in messages:
        out[m.partition].append(m)
    return dict(out)


def publish_numbered(pub, per_partition: int, calls_per_round: int = 3) -> dict[int, list[bytes]]:
    """`per_partition` records in each partition, in several publish calls of
    records spread over the partitions; returns partition → values in publish order."""
    expected: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    batch: list[Record] = []
    for seq in range(per_partition):
        for p in range(PARTITIONS):
            value = b"p%d-n%d-\x00\xff" % (p, seq)
            batch.append(Record(p, value))
            expected[p].append(value)
            if len(batch) == calls_per_round:
                pub.publish(batch, 10)
                batch = []
    if batch:
        pub.publish(batch, 10)
    return expected


def test_partition_count(backend):
    assert backend.publisher().partition_count() == PARTITIONS


def test_records_come_back_with_partition_and_value_in_offset_order_dense_from_zero(backend):
    pub = backend.publisher()
    expected = publish_numbered(pub, per_partition=10)
    big = bytes(range(256)) * 800  # ~200 KB, every byte value
    pub.publish([Record(2, big)], 10)
    expected[2].append(big)

    sub = backend.subscriber(unique("g"))
    if backend.name == "kafka":
        assert (KafkaTCPTransport._sock_recv is kafka_recv._sock_recv) is backend.large_reads
    got = drain(sub, expected=41)
    assert len(got) == 41
    assert sub.assignment() == set(range(PARTITIONS))
    parts = by_partition(got)
    assert set(parts) == set(range(PARTITIONS))
    for p, messages in parts.items():
        assert [m.offset for m in messages] == list(range(len(expected[p])))  # dense from 0, in order
        assert [m.value for m in messages] == expected[p]
        assert all(isinstance(m.value, bytes) for m in messages)


def test_commit_then_a_new_member_resumes_after_the_committed_offsets(backend):
    pub = backend.publisher()
    group, other_group = unique("g"), unique("other")
    # The other group subscribes before anything is consumed (the local log keeps,
    # for every group it knows, what that group has not committed).
    other = backend.subscriber(other_group)
    expected = publish_numbered(pub, per_partition=10)

    first = backend.subscriber(group)
    assert len(drain(first, expected=40)) == 40
    # Partition 0: 3 processed; 1: none committed; 2: all; 3: 7 processed.
    first.commit({0: 3, 2: 10, 3: 7})
    backend.close(first)  # a crash after the commit: the rest was never processed

    second = backend.subscriber(group)
    resumed = by_partition(drain(second, expected=7 + 10 + 3))
    assert {p: [m.offset for m in ms] for p, ms in resumed.items()} == {
        0: list(range(3, 10)),
        1: list(range(10)),
        3: list(range(7, 10)),
    }
    assert [m.value for m in resumed[0]] == expected[0][3:]
    assert [m.value for m in resumed[1]] == expected[1]

    # Committing everything: a third member of the group has nothing left.
    second.commit({p: 10 for p in range(PARTITIONS)})
    backend.close(second)
    third = backend.subscriber(group)
    wait_assigned(third)
    assert third.poll(100, 1.0) == []

    # Another group reads everything, from offset 0.
    everything = by_partition(drain(other, expected=40))
    assert {p: [m.value for m in ms] for p, ms in everything.items()} == expected


def test_poll_waits_its_timeout_when_nothing_is_there(backend):
    backend.publisher()
    sub = backend.subscriber(unique("g"))
    wait_assigned(sub)
    for timeout in (0.3, 1.0):
        started = time.monotonic()
        assert sub.poll(100, timeout) == []
        elapsed = time.monotonic() - started
        assert timeout * 0.9 <= elapsed <= timeout + 1.0, (timeout, elapsed)


def test_poll_returns_soon_after_a_record_arrives(backend):
    pub = backend.publisher()
    sub = backend.subscriber(unique("g"))
    wait_assigned(sub)
    timer = threading.Timer(0.3, lambda: pub.publish([Record(1, b"late")], 10))
    started = time.monotonic()
    timer.start()
    try:
        got = sub.poll(100, 10.0)
    finally:
        timer.join()
    elapsed = time.monotonic() - started
    assert [(m.partition, m.offset, m.value) for m in got] == [(1, 0, b"late")]
    assert 0.3 <= elapsed < 2.0, elapsed


def test_poll_returns_at_most_max_messages_and_continues_where_it_stopped(backend):
    pub = backend.publisher()
    expected = publish_numbered(pub, per_partition=5)
    sub = backend.subscriber(unique("g"))
    got: list[Message] = []
    deadline = time.monotonic() + 20
    while len(got) < 20 and time.monotonic() < deadline:
        batch = sub.poll(3, 0.5)
        assert len(batch) <= 3
        got += batch
    assert {p: [m.value for m in ms] for p, ms in by_partition(got).items()} == expected


def test_publishing_from_many_threads_loses_and_duplicates_nothing(backend):
    pub = backend.publisher()
    threads, calls = 8, 40
    errors = []

    def run(t: int) -> None:
        try:
            for i in range(calls):
                # 1 to 3 records per call, over different partitions.
                pub.publish(
                    [Record((t + i + j) % PARTITIONS, b"t%d-c%d-r%d" % (t, i, j)) for j in range(1 + i % 3)],
                    10,
                )
        except Exception as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    total = threads * sum(1 + i % 3 for i in range(calls))

    got = drain(backend.subscriber(unique("g")), expected=total)
    values = [m.value for m in got]
    assert len(values) == total and len(set(values)) == total
    assert set(values) == {
        b"t%d-c%d-r%d" % (t, i, j) for t in range(threads) for i in range(calls) for j in range(1 + i % 3)
    }
    for p, messages in by_partition(got).items():
        assert [m.offset for m in messages] == list(range(len(messages)))
        # Each thread's calls follow one another, so its records keep their order in the partition.
        per_thread = defaultdict(list)
        for m in messages:
            t, i, j = (int(x[1:]) for x in m.value.split(b"-"))
            assert (t + i + j) % PARTITIONS == p
            per_thread[t].append((i, j))
        assert all(seq == sorted(seq) for seq in per_thread.values())


def test_at_end_once_every_partition_is_read_to_its_end(backend):
    pub = backend.publisher()
    publish_numbered(pub, per_partition=5)
    sub = backend.subscriber(unique("g"))
    assert not sub.at_end()  # nothing read yet: not known
    got: list[Message] = []
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        got += sub.poll(3, 0.5)
    assert 0 < len(got) <= 3 and not sub.at_end()  # 17 or more still there
    while len(got) < 20 and time.monotonic() < deadline:
        got += sub.poll(1000, 0.5)
        assert sub.at_end() == (len(got) == 20)  # never before the last message is polled
    assert len(got) == 20 and sub.at_end()

    pub.publish([Record(2, b"one more")], 10)
    more: list[Message] = []
    while not more and time.monotonic() < deadline:
        more = sub.poll(1000, 0.5)
    assert [m.value for m in more] == [b"one more"] and sub.at_end()


def test_revocation_is_delivered_as_the_interface_says(backend):
    """schemas.queue.Subscriber: a second member of the group either takes partitions away from the first,
    which hears of it through on_revoke before the second reads them (Kafka), or is refused because the queue
    is exclusive (the local log: its one member owns every partition and never hears of a revocation)."""
    pub = backend.publisher()
    group, revoked = unique("g"), []
    first = backend.subscriber(group, on_revoke=revoked.append)
    wait_assigned(first)
    if backend.name == "local":
        assert first.exclusive
        with pytest.raises(GroupBusy):
            backend.subscriber(group)
        publish_numbered(pub, per_partition=1)
        assert len(drain(first, expected=4)) == 4 and revoked == []
        return
    assert not first.exclusive
    second = backend.subscriber(group)
    # Each member joins the rebalance from its own poll() (one thread per subscriber, as the contract allows).
    stop = threading.Event()
    joined = threading.Thread(target=lambda: [second.poll(100, 0.2) for _ in iter(stop.is_set, True)])
    joined.start()
    try:
        deadline = time.monotonic() + 60
        while not (
            second.assignment()
            and first.assignment()
            and not first.assignment() & second.assignment()
            and first.assignment() | second.assignment() == set(range(PARTITIONS))
        ):
            assert time.monotonic() < deadline, (first.assignment(), second.assignment(), revoked)
            first.poll(100, 0.2)
    finally:
        stop.set()
        joined.join()
    # The partitions the second member now owns were revoked from the first, inside its poll().
    assert revoked and all(isinstance(p, set) for p in revoked)
    assert second.assignment() <= set().union(*revoked)
