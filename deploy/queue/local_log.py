"""The queue as a durable local log in one SQLite file (embedded mode).

"One command, no servers": the front door's gunicorn workers append to the file,
the consumer reads it, and both go through SQLite's own locking, so any number
of processes and threads on one machine can share it. The file lives under the
data directory (`<data_dir>/queue.sqlite3`) next to its `-wal` and `-shm` files.

Layout
    meta(key, value)                    'partitions', fixed when the file is created
    heads(partition, next_offset)       the offset the next record of a partition gets
    log(partition, offset, value)       the records, PRIMARY KEY (partition, offset)
    groups(name)                        every consumer group that ever subscribed
    group_offsets(grp, partition, next_offset)   each group's committed position

Offsets. A publish is one `BEGIN IMMEDIATE` transaction: it takes SQLite's
single write lock up front, reads the partitions' counters from `heads`, inserts
every record of the call with consecutive offsets and moves the counters on,
then commits. Writers are therefore serialised, each transaction's offsets
follow the previous one's, and a reader (who only ever sees committed
transactions) can never see offset N+1 without N. Offsets are dense from 0 per
partition; the counter row (rather than max(offset)+1) keeps them increasing
after pruning has emptied a partition.

Durability. WAL mode with `synchronous=FULL`: the WAL is fsynced at every
commit, so once publish() returns the records survive a kill -9 of any process
and a power cut. NORMAL (fsync at checkpoints only) survives process crashes but
may lose the last commits on power loss. FULL costs one fsync per commit whatever
its size, and a front-door request is one commit however many events it carries
(concurrent requests share records), so the two settings converge as commits
grow: FULL is kept. The page size stays SQLite's 4 KB: larger pages were no
faster for large records and slower for small commits. The measurements are in
bench/README.md ("The local log's durability setting").

Consumers. One subscriber per consumer group at a time: it holds an exclusive
`flock` on `<path>.<group>.lock` and a second one is refused with GroupBusy. It
owns every partition: an `exclusive` subscriber in the terms of
schemas.queue.Subscriber (no rebalance, so nothing is ever revoked). Embedded mode
scales by batching (bigger polls, bigger ClickHouse inserts), not by adding
consumers; use Kafka for that.
A new subscriber of a group starts at the group's committed offsets, so after a
crash exactly the uncommitted messages are delivered again; a group that never
committed starts at the oldest record still in the log.

Pruning. Records below every registered group's committed offset are deleted
(by the consumer, from commit(), at most once per `prune_interval` seconds and
a bounded number of rows at a time, so a prune never holds the write lock for
long). A group is registered when it first subscribes: from then on nothing it
has not committed is pruned, but records pruned before it existed are gone (as
with Kafka's retention). While any registered group has not committed a
partition, nothing of that partition is pruned, so a group that is no longer
used must be dropped (`flokit queue forget-group NAME`, forget_group()) or it
keeps the log from shrinking.
Freed pages are reused by later appends; the file keeps its high-water size.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from schemas.queue import GroupBusy, Message, OnRevoke, Publisher, QueueUnavailable, Record, Subscriber

log = logging.getLogger(__name__)

# SQLite's default, written down: larger pages measured no faster for 50-900 KB
# records and slower for small commits. Only takes effect when the file is created.
PAGE_SIZE = 4096
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) ;
CREATE TABLE IF NOT EXISTS heads (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    partition INTEGER NOT NULL, offset INTEGER NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (partition, offset));
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (grp, partition));
"""


def _journal_mode_wal(conn: sqlite3.Connection, busy_timeout: float) -> str:
    """Switch to WAL, waiting out other connections as any statement does. SQLite answers "database is
    locked" to this pragma at once, without its busy handler, while another process is creating the file
    (seen with four processes opening a new log together)."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


@contextmanager
def _transaction(db: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """`BEGIN <mode>` … `COMMIT`, or `ROLLBACK` when the block (or the commit) fails. IMMEDIATE takes
    SQLite's write lock up front, waiting for it up to the connection's busy timeout ("database is locked"
    after that); DEFERRED reads one snapshot. A rollback that fails leaves the connection in its
    transaction (`in_transaction`): the caller drops such a connection."""
    db.execute(f"BEGIN {mode}")
    try:
        yield db
        db.execute("COMMIT")  # with synchronous=FULL, returns once the WAL is fsynced
    except BaseException:
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


def _connect(path: Path, busy_timeout: float, synchronous: str = "FULL") -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), with the
    file created and its schema in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # no-op once the file exists
        if _journal_mode_wal(conn, busy_timeout).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot put {path} in WAL mode")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA journal_size_limit=67108864")  # the WAL back to 64 MB after a checkpoint
        with _transaction(conn):
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
    except BaseException:
        conn.close()
        raise
    return conn


def _stored_partitions(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'partitions'").fetchone()
    return None if row is None else int(row[0])


def _lock_group(path: Path, group: str) -> int:
    """Take the group's lock (`<path>.<group>.lock`, held until the returned descriptor is closed), or raise
    GroupBusy when another subscriber of the group, in any process, holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f"{path.name}.{urllib.parse.quote(group, safe='')}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise GroupBusy(
                f"consumer group {group!r} already has a subscriber on {path} (lock {lock_path}); "
                "the embedded queue allows one consumer per group, scale it with bigger batches or "
                "use Kafka"
            ) from None
        raise
    return fd


class LocalLogPublisher(Publisher):
    """Appends to the local log; safe to share between threads, and between
    processes through the file (each process, e.g. each gunicorn worker, opens
    its own connection after the fork).

    Threads of one process take turns on one connection behind a lock (SQLite
    serialises writers anyway, and a Python lock wakes the next one at once
    instead of SQLite's sleep-and-retry); processes contend on the file lock.
    """

    def __init__(self, path: Path, partitions: int, timeout: float, *, synchronous: str = "FULL"):
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if synchronous.upper() not in ("FULL", "EXTRA", "NORMAL"):
            raise ValueError("synchronous must be FULL, EXTRA or NORMAL")
        self._path = Path(path)
        self._requested_partitions = partitions
        self._timeout = timeout
        self._synchronous = synchronous.upper()
        self._partitions: int | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._inherited: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        """This process's connection (call with self._lock held)."""
        if self._db is None:
            db = _connect(self._path, self._timeout, self._synchronous)
            try:
                with _transaction(db):
                    stored = _stored_partitions(db)
                    if stored is None:
                        stored = self._requested_partitions
                        db.execute("INSERT INTO meta (key, value) VALUES ('partitions', ?)", (stored,))
                    db.executemany(
                        "INSERT OR IGNORE INTO heads (partition, next_offset) VALUES (?, 0)",
                        [(p,) for p in range(stored)],
                    )
            except BaseException:
                db.close()
                raise
            if stored != self._requested_partitions:
                log.warning(
                    "%s was created with %d partitions; keeping %d rather than the %d configured "
                    "(changing it would move devices between partitions)",
                    self._path,
                    stored,
                    stored,
                    self._requested_partitions,
                )
            self._partitions = stored
            self._db = db
        return self._db

    def _after_fork(self) -> None:
        # A connection (or a lock held at fork time) must not cross a fork.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._lock = threading.Lock()
            # Not closed here (that could release the parent's SQLite file locks) and kept
            # referenced so the garbage collector does not close it either.
            self._inherited, self._db = self._db, None

    def _drop_connection(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None

    def partition_count(self) -> int:
        if self._partitions is None:
            self._after_fork()
            if not self._lock.acquire(timeout=self._timeout):
                raise QueueUnavailable(f"local log {self._path} busy for {self._timeout:g}s")
            try:
                self._conn()
            except sqlite3.Error as exc:
                self._drop_connection()
                raise QueueUnavailable(f"cannot open the local log {self._path}: {exc}") from exc
            finally:
                self._lock.release()
        assert self._partitions is not None  # _conn() sets it
        return self._partitions

    def publish(self, records: Sequence[Record], timeout: float) -> None:
        if not records:
            return
        partitions = self.partition_count()
        for r in records:
            if not 0 <= r.partition < partitions:
                raise ValueError(f"partition {r.partition} out of range 0..{partitions - 1}")
        deadline = time.monotonic() + timeout
        self._after_fork()
        if not self._lock.acquire(timeout=max(0.0, timeout)):
            raise QueueUnavailable(f"local log {self._path}: no turn to write within {timeout:g}s")
        try:
            db = self._conn()
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise QueueUnavailable(f"local log {self._path}: no turn to write within {timeout:g}s")
            db.execute(f"PRAGMA busy_timeout={remaining_ms}")
            with _transaction(db):  # the write lock, or "database is locked" at the deadline
                heads = dict(db.execute("SELECT partition, next_offset FROM heads"))
                touched = {r.partition for r in records}
                rows = []
                for r in records:
                    rows.append((r.partition, heads[r.partition], r.value))
                    heads[r.partition] += 1
                db.executemany("INSERT INTO log (partition, offset, value) VALUES (?, ?, ?)", rows)
                db.executemany(
                    "UPDATE heads SET next_offset = ? WHERE partition = ?", [(heads[p], p) for p in touched]
                )
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # a bug in the caller (e.g. a value that is not bytes), not an unavailable queue
        except sqlite3.Error as exc:  # locked past the deadline, disk full, I/O error...
            raise QueueUnavailable(
                f"local log {self._path} did not take the records in {timeout:g}s: {exc}"
            ) from exc
        finally:
            if self._db is not None and self._db.in_transaction:
                self._drop_connection()  # its rollback failed: the next publish starts on a new connection
            self._lock.release()

    def ready(self, timeout: float = 2.0) -> bool:
        """The file can be written now: open, and the write lock obtainable within `timeout`."""
        self._after_fork()
        try:
            self.partition_count()
        except QueueUnavailable:
            return False
        if not (os.access(self._path, os.W_OK) and os.access(self._path.parent, os.W_OK)):
            return False
        if not self._lock.acquire(timeout=timeout):
            return False
        try:
            db = self._conn()
            db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            with _transaction(db):  # the write lock, had and given back
                pass
            return True
        except sqlite3.Error:
            self._drop_connection()
            return False
        finally:
            self._lock.release()

    def close(self) -> None:
        self._after_fork()
        with self._lock:
            self._drop_connection()


class LocalLogSubscriber(Subscriber):
    """The one reader of a consumer group on the local log; owns every partition
    (`exclusive`: see schemas.queue.Subscriber for what that promises). `on_revoke`
    is taken as every subscriber takes it; being exclusive, it has nothing to revoke."""

    exclusive = True

    def __init__(
        self,
        path: Path,
        group: str,
        on_revoke: OnRevoke | None = None,
        *,
        prune_interval: float = 5.0,
        prune_batch: int = 5_000,
        max_poll_bytes: int = 16 * 1024 * 1024,
        busy_timeout: float = 30.0,
    ):
        self._path = Path(path)
        self._group = group
        self._prune_interval = prune_interval
        self._prune_batch = prune_batch
        self._max_poll_bytes = max_poll_bytes
        self._lock_fd: int | None = _lock_group(self._path, group)
        try:
            self._db = _connect(self._path, busy_timeout)
            self._db.execute(
                "INSERT OR IGNORE INTO groups (name, created_at) VALUES (?, ?)", (group, time.time())
            )
            self._positions: dict[int, int] = dict(
                self._db.execute("SELECT partition, next_offset FROM group_offsets WHERE grp = ?", (group,))
            )
        except BaseException:
            self.close()
            raise
        self._partitions: int | None = None
        self._data_version: int | None = None
        self._next_prune = time.monotonic() + prune_interval
        self._rotation = 0
        self._at_end = False  # as of the last fetch (at_end())

    def _partition_count(self) -> int:
        if self._partitions is None:
            self._partitions = _stored_partitions(self._db)  # None until a publisher created the log
        return self._partitions or 0

    def assignment(self) -> set[int]:
        return set(range(self._partition_count()))

    def at_end(self) -> bool:
        return self._at_end

    def _fetch(self, max_messages: int) -> list[Message]:
        db = self._db
        # Read before the snapshot: a commit in between is seen now and once more later, never missed.
        self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
        count = self._partition_count()
        if not count:
            return []
        out: list[Message] = []
        size = 0
        with _transaction(db, "DEFERRED"):  # one snapshot for every partition
            first = self._rotation = (self._rotation + 1) % count  # no partition starves the others
            for i in range(count):
                partition = (first + i) % count
                want = max_messages - len(out)
                if want <= 0 or size >= self._max_poll_bytes:
                    break
                position = self._positions.get(partition, 0)
                for offset, value in db.execute(
                    "SELECT offset, value FROM log WHERE partition = ? AND offset >= ? "
                    "ORDER BY offset LIMIT ?",
                    (partition, position, want),
                ):
                    out.append(Message(partition, offset, value))
                    position = offset + 1
                    size += len(value)
                    if size >= self._max_poll_bytes:
                        break
                self._positions[partition] = position
        # Every partition was read to its end in this snapshot unless a bound stopped a read (a partition
        # that gave all it was asked for leaves len(out) at max_messages).
        self._at_end = len(out) < max_messages and size < self._max_poll_bytes
        return out

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        if max_messages <= 0:
            return []
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            messages = self._fetch(max_messages)
            if messages:
                return messages
            # Wait for another connection to commit (data_version changes), checking
            # the file every 5 ms at first and every 50 ms once it has been quiet.
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                time.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.05)
                if self._db.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
                    delay = 0.005
                    break

    def commit(self, offsets: Mapping[int, int]) -> None:
        if not offsets:
            return
        for partition, offset in offsets.items():
            if partition < 0 or offset < 0:
                raise ValueError(f"cannot commit offset {offset} of partition {partition}")
        try:
            with _transaction(self._db) as db:
                db.executemany(
                    "INSERT INTO group_offsets (grp, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (grp, partition) DO UPDATE SET next_offset = excluded.next_offset",
                    [(self._group, p, o) for p, o in offsets.items()],
                )
        except sqlite3.OperationalError as exc:  # the disk full, the log locked past the busy timeout
            raise QueueUnavailable(f"offsets not committed to {self._path}: {exc}") from exc
        if time.monotonic() >= self._next_prune:
            try:
                more = self.prune()
            except sqlite3.OperationalError as exc:  # pruning is housekeeping: never fail a commit over it
                log.warning("pruning %s failed: %s", self._path, exc)
                more = False
            self._next_prune = time.monotonic() + (0 if more else self._prune_interval)

    def prune(self) -> bool:
        """Delete records every registered group has committed past, at most
        `prune_batch` per partition; True when some are left to delete."""
        more = False
        with _transaction(self._db) as db:
            for partition in range(self._partition_count()):
                # A group with no committed offset for the partition holds it at 0.
                bound = db.execute(
                    "SELECT MIN(COALESCE(o.next_offset, 0)) FROM groups g "
                    "LEFT JOIN group_offsets o ON o.grp = g.name AND o.partition = ?",
                    (partition,),
                ).fetchone()[0]
                if not bound:
                    continue
                low = db.execute("SELECT MIN(offset) FROM log WHERE partition = ?", (partition,)).fetchone()[
                    0
                ]
                if low is None or low >= bound:
                    continue
                upto = min(bound, low + self._prune_batch)
                db.execute("DELETE FROM log WHERE partition = ? AND offset < ?", (partition, upto))
                more = more or upto < bound
        return more

    def close(self) -> None:
        db = getattr(self, "_db", None)  # absent if __init__ failed, or once closed
        if db is not None:
            db.close()
            del self._db
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def forget_group(path: Path, group: str) -> bool:
    """Drop a consumer group that is no longer used, so it stops holding back pruning (`flokit queue
    forget-group`); False if the log has no such group. Raises GroupBusy while a subscriber of it is open."""
    lock_fd = _lock_group(Path(path), group)
    try:
        db = _connect(Path(path), 30.0)
        try:
            with _transaction(db):
                db.execute("DELETE FROM group_offsets WHERE grp = ?", (group,))
                return db.execute("DELETE FROM groups WHERE name = ?", (group,)).rowcount > 0
        finally:
            db.close()
    finally:
        os.close(lock_fd)
