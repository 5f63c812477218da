"""The embedded queue's own guarantees, beyond the contract both queues share
(tests/test_queue_contract.py): several processes appending to one file, a
publisher killed mid-write, one subscriber per group, pruning, a locked file."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import closing
from itertools import pairwise
from pathlib import Path

import pytest

from deploy import components
from deploy.queue.local_log import GroupBusy, LocalLogPublisher, LocalLogSubscriber, forget_group
from deploy.settings import Settings
from schemas.queue import QueueUnavailable, Record

from .services import ROOT

PARTITIONS = 4

# A publishing process: once the file "go" exists next to the log, `calls`
# publish calls of call_records(name, i), printing i once each call has returned.
PUBLISHER = """
import sys, time
from pathlib import Path
from deploy.queue.local_log import LocalLogPublisher
from tests.test_local_log import call_records
path, name, calls = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
publisher = LocalLogPublisher(path, 4, 30)
go = path.with_name("go")
while not go.exists():  # every process starts publishing at the same moment
    time.sleep(0.005)
for i in range(calls):
    publisher.publish(call_records(name, i), 30)
    print(i, flush=True)
"""


def call_records(name: str, i: int) -> list[Record]:
    """The records of publish call `i` of publisher `name`: three partitions,
    one record of 20 KB whose content can be checked byte for byte."""
    head = f"{name}:{i}:".encode()
    big = hashlib.sha256(head).digest() * 640
    return [
        Record(i % PARTITIONS, head + b"0:"),
        Record((i + 1) % PARTITIONS, head + b"1:" + big),
        Record((i + 2) % PARTITIONS, head + b"2:"),
    ]


def parse(value: bytes) -> tuple[str, int, int]:
    name, i, j, rest = value.split(b":", 3)
    if j == b"1":
        assert rest == hashlib.sha256(b"%s:%s:" % (name, i)).digest() * 640, "a record came back altered"
    return name.decode(), int(i), int(j)


def spawn_publisher(path: Path, name: str, calls: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(path), name, str(calls)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def read_all(path: Path, group: str = "reader"):
    sub = LocalLogSubscriber(path, group)
    try:
        got = []
        while True:
            batch = sub.poll(10_000, 0.2)
            if not batch:
                return got
            got += batch
    finally:
        sub.close()


def rows(path: Path) -> dict[int, tuple[int, int, int]]:
    """partition → (lowest offset, highest offset, count) of the records stored."""
    with closing(sqlite3.connect(path)) as db:
        return {
            p: (lo, hi, n)
            for p, lo, hi, n in db.execute(
                "SELECT partition, MIN(offset), MAX(offset), COUNT(*) FROM log GROUP BY partition"
            )
        }


def assert_dense_and_ordered(messages) -> dict[str, set[int]]:
    """Offsets dense from 0 per partition, each publisher's calls in order
    within each partition; returns publisher → the call numbers seen."""
    per_partition = defaultdict(list)
    for m in messages:
        per_partition[m.partition].append(m)
    calls = defaultdict(lambda: defaultdict(set))
    for p, ms in per_partition.items():
        assert [m.offset for m in ms] == list(range(len(ms))), f"partition {p} not dense from 0"
        order = defaultdict(list)
        for m in ms:
            name, i, j = parse(m.value)
            assert (i + j) % PARTITIONS == p
            order[name].append(i)
            calls[name][i].add(j)
        assert all(seq == sorted(seq) for seq in order.values()), f"a publisher's records out of order in {p}"
    for name, by_call in calls.items():
        incomplete = {i: js for i, js in by_call.items() if js != {0, 1, 2}}
        assert not incomplete, f"{name}: calls half written: {incomplete}"
    return {name: set(by_call) for name, by_call in calls.items()}


def test_processes_appending_at_once_each_record_exactly_once(tmp_path):
    path = tmp_path / "queue.sqlite3"  # not created yet: the processes race to create it too
    procs = [spawn_publisher(path, f"proc{n}", 500) for n in range(4)]
    time.sleep(0.5)  # let them all import and open the file
    path.with_name("go").touch()
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
        assert out.split() == [b"%d" % i for i in range(500)]
    messages = read_all(path)
    assert len(messages) == 4 * 500 * 3
    assert len({m.value for m in messages}) == len(messages)
    assert assert_dense_and_ordered(messages) == {f"proc{n}": set(range(500)) for n in range(4)}
    # They did write at the same time: the processes' records interleave in the log
    # (one after the other would change writer 3 times; SQLite's lock is not fair,
    # so a process often keeps it for a while, but never for all its 500 calls).
    writers = [parse(m.value)[0] for m in messages if m.partition == 0]
    assert sum(a != b for a, b in pairwise(writers)) > 3


def test_kill_9_mid_load_keeps_every_acknowledged_publish_and_no_half(tmp_path):
    path = tmp_path / "queue.sqlite3"
    proc = spawn_publisher(path, "victim", 1_000_000)
    path.with_name("go").touch()
    acknowledged = -1
    for line in proc.stdout:  # kill it while it is publishing flat out
        acknowledged = int(line)
        if acknowledged >= 300:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acknowledged = max([acknowledged, *map(int, proc.stdout.read().split())])
    proc.stdout.close()
    proc.stderr.close()

    with closing(sqlite3.connect(path)) as db:  # the recovery happens here, as the next opener
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    seen = assert_dense_and_ordered(read_all(path))["victim"]
    # Every call that returned is there; at most the one in flight made it too, whole.
    assert seen == set(range(len(seen))) and acknowledged + 1 <= len(seen) <= acknowledged + 2

    # The log takes appends after the crash, continuing each partition's offsets.
    LocalLogPublisher(path, PARTITIONS, 5).publish(call_records("after", 0), 5)
    assert assert_dense_and_ordered(read_all(path, "reader2")) == {"victim": seen, "after": {0}}


def test_a_second_subscriber_of_a_group_is_refused(tmp_path):
    path = tmp_path / "queue.sqlite3"
    first = LocalLogSubscriber(path, "consumers")
    with pytest.raises(GroupBusy, match="already has a subscriber"):
        LocalLogSubscriber(path, "consumers")
    refused_elsewhere = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from deploy.queue.local_log import LocalLogSubscriber as S\n"
            "try: S(sys.argv[1], 'consumers')\nexcept Exception as e: sys.exit(type(e).__name__)",
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused_elsewhere.returncode == 1 and refused_elsewhere.stderr.strip() == "GroupBusy"
    other = LocalLogSubscriber(path, "other/group with odd name")  # another group is fine
    other.close()
    first.close()
    LocalLogSubscriber(path, "consumers").close()  # and the group is free once the first is closed


def test_pruning_removes_what_every_group_committed_and_keeps_the_rest(tmp_path):
    path = tmp_path / "queue.sqlite3"
    pub = LocalLogPublisher(path, PARTITIONS, 5)
    for seq in range(10):
        pub.publish([Record(p, b"%d-%d" % (p, seq)) for p in range(PARTITIONS)], 5)
    a = LocalLogSubscriber(path, "a", prune_interval=0)
    b = LocalLogSubscriber(path, "b", prune_interval=3600)
    assert len(a.poll(1000, 1)) == len(b.poll(1000, 1)) == 40

    assert a.prune() is False and rows(path) == {p: (0, 9, 10) for p in range(4)}  # nobody committed yet
    a.commit({p: 10 for p in range(PARTITIONS)})  # prunes (interval 0), but b holds everything
    assert rows(path) == {p: (0, 9, 10) for p in range(4)}
    b.commit({0: 4, 1: 10, 2: 0})  # partition 3 not committed by b
    a.commit({p: 10 for p in range(PARTITIONS)})
    assert rows(path) == {0: (4, 9, 6), 2: (0, 9, 10), 3: (0, 9, 10)}

    # What b has not committed is still delivered to it after a restart.
    b.close()
    b = LocalLogSubscriber(path, "b")
    again = b.poll(1000, 1)
    assert sorted((m.partition, m.offset) for m in again) == [(0, o) for o in range(4, 10)] + [
        (2, o) for o in range(10)
    ] + [(3, o) for o in range(10)]

    # A partition emptied by pruning keeps counting its offsets from where it was.
    with pytest.raises(GroupBusy):  # not while a subscriber of it is open
        forget_group(path, "b")
    b.close()
    assert forget_group(path, "b") and not forget_group(path, "b")
    a.commit({p: 10 for p in range(PARTITIONS)})
    assert rows(path) == {}
    pub.publish([Record(1, b"next")], 5)
    assert [(m.partition, m.offset, m.value) for m in a.poll(10, 1)] == [(1, 10, b"next")]
    a.close()


def test_pruning_deletes_a_bounded_number_of_rows_per_pass(tmp_path):
    path = tmp_path / "queue.sqlite3"
    pub = LocalLogPublisher(path, PARTITIONS, 5)
    pub.publish([Record(p, b"x") for p in range(PARTITIONS) for _ in range(120)], 5)
    sub = LocalLogSubscriber(path, "only", prune_interval=3600, prune_batch=50)
    assert len(sub.poll(1000, 1)) == 480
    sub.commit({p: 120 for p in range(PARTITIONS)})  # not due yet: nothing pruned
    assert rows(path) == {p: (0, 119, 120) for p in range(PARTITIONS)}
    assert sub.prune() is True and rows(path) == {p: (50, 119, 70) for p in range(PARTITIONS)}
    assert sub.prune() is True and rows(path) == {p: (100, 119, 20) for p in range(PARTITIONS)}
    assert sub.prune() is False and rows(path) == {}
    sub.close()


def test_pruning_keeps_the_file_from_growing(tmp_path):
    path = tmp_path / "queue.sqlite3"
    pub = LocalLogPublisher(path, PARTITIONS, 5)
    sub = LocalLogSubscriber(path, "only", prune_interval=0)
    value = os.urandom(50_000)

    def page_count() -> int:
        with closing(sqlite3.connect(path)) as db:
            return db.execute("PRAGMA page_count").fetchone()[0]

    def round_trip() -> None:  # 10 MB through the log, consumed and committed
        for _ in range(50):
            pub.publish([Record(p, value) for p in range(PARTITIONS)], 5)
        got = []
        while len(got) < 200:
            got += sub.poll(10_000, 1)
        sub.commit({p: max(m.offset for m in got if m.partition == p) + 1 for p in range(PARTITIONS)})
        assert rows(path) == {}

    round_trip()
    after_first = page_count()
    assert after_first * 4096 >= 10_000_000
    for _ in range(3):
        round_trip()
    assert page_count() <= after_first * 1.1  # the pages freed by pruning are reused
    sub.close()


def test_publish_is_all_or_nothing(tmp_path):
    path = tmp_path / "queue.sqlite3"
    pub = LocalLogPublisher(path, PARTITIONS, 5)
    with pytest.raises(ValueError, match="out of range"):
        pub.publish([Record(0, b"fine"), Record(PARTITIONS, b"no such partition")], 5)
    with pytest.raises(sqlite3.ProgrammingError):  # fails inside the transaction, after the first insert
        pub.publish([Record(0, b"fine"), Record(1, b"fine"), Record(2, object())], 5)
    assert rows(path) == {}
    pub.publish([Record(0, b"a"), Record(0, b"b")], 5)
    assert [(m.offset, m.value) for m in read_all(path)] == [(0, b"a"), (1, b"b")]


def test_a_locked_file_makes_publish_unavailable_within_its_timeout(tmp_path):
    path = tmp_path / "queue.sqlite3"
    pub = LocalLogPublisher(path, PARTITIONS, 5)
    pub.publish([Record(0, b"before")], 5)
    assert pub.ready(timeout=1)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    try:
        started = time.monotonic()
        with pytest.raises(QueueUnavailable, match="database is locked"):
            pub.publish([Record(0, b"while locked")], 0.5)
        assert 0.45 <= time.monotonic() - started <= 2.0
        assert not pub.ready(timeout=0.2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    pub.publish([Record(0, b"after")], 5)
    assert pub.ready(timeout=1)
    assert [(m.offset, m.value) for m in read_all(path)] == [(0, b"before"), (1, b"after")]


def test_the_partition_count_is_fixed_when_the_file_is_created(tmp_path, caplog):
    path = tmp_path / "queue.sqlite3"
    assert LocalLogPublisher(path, 4, 5).partition_count() == 4
    with caplog.at_level(logging.WARNING, logger="deploy.queue.local_log"):
        later = LocalLogPublisher(path, 8, 5)
        assert later.partition_count() == 4
    assert "created with 4 partitions" in caplog.text
    with pytest.raises(ValueError):
        later.publish([Record(5, b"x")], 5)


def test_a_subscriber_opened_before_any_publisher_sees_later_records(tmp_path):
    path = tmp_path / "queue.sqlite3"
    sub = LocalLogSubscriber(path, "early")
    assert sub.assignment() == set() and sub.poll(10, 0.1) == []
    LocalLogPublisher(path, 2, 5).publish([Record(1, b"x")], 5)
    assert [(m.partition, m.offset, m.value) for m in sub.poll(10, 2)] == [(1, 0, b"x")]
    assert sub.assignment() == {0, 1}
    sub.close()


def test_a_publisher_keeps_working_in_a_forked_child(tmp_path):
    path = tmp_path / "queue.sqlite3"
    pub = LocalLogPublisher(path, PARTITIONS, 5)
    pub.publish([Record(0, b"parent-1")], 5)  # the parent has a connection open at fork time
    pid = os.fork()
    if pid == 0:  # the child: its own connection, never the parent's
        try:
            for i in range(20):
                pub.publish([Record(0, b"child-%d" % i)], 5)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    pub.publish([Record(0, b"parent-2")], 5)
    assert [m.value for m in read_all(path)] == [
        b"parent-1",
        *(b"child-%d" % i for i in range(20)),
        b"parent-2",
    ]


def test_components_choose_the_local_log_in_embedded_mode(tmp_path):
    settings = Settings.from_env({}, data_dir=tmp_path, partitions=3)
    pub = components.make_publisher(settings)
    sub = components.make_subscriber(settings, on_revoke=lambda partitions: None)
    try:
        assert isinstance(pub, LocalLogPublisher) and isinstance(sub, LocalLogSubscriber)
        pub.publish([Record(2, b"x")], 5)
        assert [(m.partition, m.value) for m in sub.poll(10, 2)] == [(2, b"x")]
        assert (tmp_path / "queue.sqlite3").exists()
    finally:
        sub.close()
        pub.close()
