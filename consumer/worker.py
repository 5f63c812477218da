"""The consumer loop: poll → decode → batch → resolve identities → write →
dead letters → commit, with offsets committed only after ClickHouse
acknowledged the batch (see the package docstring for the dedupe table)."""

from __future__ import annotations

import gc
import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from schemas import warehouse
from schemas.queue import CommitFailed, Message, SubscriberFactory

from .batch import Batch, BatchSizes
from .config import ConsumerConfig
from .dead_letters import DeadLetters
from .decode import Decoded, decode
from .dedupe import RecentIds
from .identity import IdentityCache
from .rows import MessageRows, events_body, links_body, message_rows
from .transient import is_transient
from .writer import BatchWriter, RowsRejected

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0


class Stopped(Exception):
    """A stop was requested while waiting for the warehouse to come back."""


class Worker:
    def __init__(
        self,
        config: ConsumerConfig,
        subscriber_factory: SubscriberFactory,
        writers: Sequence[BatchWriter],
        dead_letters: DeadLetters,
        identity: IdentityCache,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`writers`: one per batch that may be written at once (each with its own warehouse client);
        `subscriber_factory(on_revoke)`: the queue, told to call this worker when partitions are revoked."""
        self._config = config
        self._idle_writers: queue.SimpleQueue[BatchWriter] = queue.SimpleQueue()
        for writer in writers:
            self._idle_writers.put(writer)
        self._dead_letters = dead_letters
        self._identity = identity
        self._clock = clock
        self._recent = RecentIds()
        self._sizes = BatchSizes(config.batch_max_events)
        self._stop = threading.Event()
        self._stop_at = 0.0
        self._batch = self._new_batch()
        self.flushed_events = 0  # written to the warehouse by this worker (for logs and tests)
        self._max_in_flight = len(writers)
        self._write_threads = ThreadPoolExecutor(max_workers=self._max_in_flight, thread_name_prefix="writer")
        # Batches being written, oldest first, with the offsets to commit once each is written.
        self._in_flight: deque[tuple[Future[int], dict[int, int]]] = deque()
        # Start from a batch request's share of one partition (1,000 events over a few partitions), so the
        # very first poll does not ask for a whole batch's worth of messages of unknown size.
        self._events_per_message = 250.0
        self._revoke_failure: BaseException | None = None  # see _on_revoke()
        self._subscriber = subscriber_factory(self._on_revoke)

    def _new_batch(self) -> Batch:
        return Batch(self._sizes.next, self._config.batch_max_seconds)

    def stop(self) -> None:
        """Finish the batch in hand, commit it and leave the group (safe from a signal handler)."""
        self._stop_at = self._clock()
        self._stop.set()

    def run(self) -> None:
        """Consume until stop(). A failure that is not transient (consumer/transient.py) is raised from here
        once the writes in flight have ended, with nothing more committed."""
        gc.disable()  # see _finish_oldest_write()
        gc.freeze()  # and leave what start-up made (modules, clients) out of those collections
        try:
            while not self._stop.is_set():
                self.step()
            self.drain()
        except Stopped:
            log.warning(
                "stopped while the warehouse or the queue was unavailable; the batch in hand was not"
                " committed and will be delivered again"
            )
        except BaseException:
            # Writes in flight that are waiting out the warehouse give up within STOP_GRACE_SECONDS.
            self.stop()
            raise
        finally:
            self._write_threads.shutdown(wait=True)
            self._subscriber.close()

    def step(self) -> None:
        """One poll, and a flush when the batch is due."""
        now = self._clock()
        # A message holds one request's events for one partition (1 to ~1,000): ask for as many messages
        # as the batch has room for events, by the running average, so batches (and memory) stay bounded.
        room = max(1, self._batch.max_events - self._batch.events)
        wanted = max(1, min(10_000, int(room / self._events_per_message)))
        # Half a second without a message is what tells the end of a burst from a steady stream whose
        # polls happen to reach the end of the queue every time: waiting only until a batch is a quarter of
        # max_seconds old made such a stream four small inserts a second instead of one large one, and
        # ClickHouse pays per insert (bench/README.md, session 5).
        try:
            messages = self._subscriber.poll(wanted, timeout=min(0.5, self._batch.seconds_left(now)))
        finally:
            self._raise_revoke_failure()
        for message in messages:
            item = decode(message)
            self._batch.add(item, self._clock())
            if isinstance(item, Decoded):
                self._events_per_message = 0.8 * self._events_per_message + 0.2 * max(
                    1, len(item.envelope.refs)
                )
        while self._in_flight and self._in_flight[0][0].done():
            self._finish_oldest_write()
        # Caught up: nothing came, and nothing is left. A poll can also come back empty with messages still
        # there (a fetch answer slower than the poll's wait, on a busy machine): that is not the end of a
        # backlog, and must not flush a part of a batch nor shrink the next one.
        caught_up = not messages and self._subscriber.at_end()
        if self._batch.due(self._clock(), caught_up=caught_up):
            self._sizes.flushed(self._batch, caught_up=caught_up)
            self.flush()

    # --- flushing --------------------------------------------------------
    #
    # A batch is polled, decoded and prepared (identities, rows) on this thread while earlier ones are
    # written to ClickHouse on writer threads (as many at once as there are writers: ClickHouse runs
    # inserts in parallel), and committed here once written, oldest first, so offsets are committed in
    # order: a batch's offsets only after it and every batch before it are written. The queue clients are
    # not thread-safe: only this thread polls and commits.

    def flush(self) -> None:
        """Prepare the batch in hand (identities, rows) while earlier ones are still being written, then
        start writing it (after the oldest write is finished and committed, if all writers are busy)."""
        if self._batch.empty():
            return
        offsets = self._batch.next_offsets
        per_message, failures = self._prepare(self._batch)
        self._batch = self._new_batch()  # and its decoded headers are gone before this waits for a writer
        while len(self._in_flight) >= self._max_in_flight:
            self._finish_oldest_write()
        self._in_flight.append(
            (self._write_threads.submit(self._write_batch, per_message, failures), offsets)
        )

    def _prepare(self, batch: Batch) -> tuple[list[MessageRows], list[tuple[Message, str]]]:
        """The batch's rows per message, after looking up the identities it needs; and the messages that
        cannot be written, with the reason."""
        anonymous_only = {
            (d.envelope.workspace, ref.anonymous_id)
            for d in batch.decoded
            for ref in d.envelope.refs
            if ref.anonymous_id and not ref.user_id
        }
        self._attempt(lambda: self._identity.prefetch(anonymous_only))
        failures = [(u.message, u.reason) for u in batch.undecodable]
        per_message: list[MessageRows] = []
        seen: set[str] = set()
        for item in batch.decoded:  # in order: a link before the events it stamps
            try:
                per_message.append(
                    message_rows(item.message, item.envelope, self._identity, self._recent, seen)
                )
            except (KeyError, TypeError, ValueError) as exc:
                failures.append((item.message, f"cannot build rows: {type(exc).__name__}: {exc}"))
        self._recent.add_all(seen)
        return per_message, failures

    def drain(self) -> None:
        """Write and commit everything in hand before returning."""
        self.flush()
        while self._in_flight:
            self._finish_oldest_write()

    def _write_batch(self, per_message: list[MessageRows], failures: list[tuple[Message, str]]) -> int:
        """On a writer thread: the rows, then the dead letters; returns how many events were stored."""
        writer = self._idle_writers.get()  # never waits: no more batches are in flight than writers
        try:
            rejected: list[tuple[Message, str]] = []
            self._attempt(lambda: rejected.extend(self._write(writer, per_message)))
            self._attempt(lambda: self._dead_letters.send(failures + rejected))
        finally:
            self._idle_writers.put(writer)
        not_stored = {id(m) for m, _ in rejected}
        return sum(len(rows.event_ids) for rows in per_message if id(rows.message) not in not_stored)

    def _finish_oldest_write(self) -> None:
        """Wait for the oldest batch being written, then commit its offsets."""
        future, offsets = self._in_flight.popleft()
        written = future.result()  # re-raises Stopped
        # A commit the queue cannot take now (the local log's disk full) is retried like a write: the batch
        # is not committed until it is, and a stop meanwhile leaves it to be delivered again.
        self._attempt(lambda: self._commit(offsets))
        self.flushed_events += written
        # The batch's objects (tens of thousands of header lists and id strings) are gone now; sweep for
        # cycles here, once, rather than let automatic collections walk a batch in hand again and again
        # while it builds (run() turns those off: they cost more than decoding did).
        gc.collect()

    def _commit(self, offsets: dict[int, int]) -> None:
        try:
            self._subscriber.commit(offsets)
        except CommitFailed as exc:
            # Written but not committed: the next owner reads these again and
            # the dedupe mechanisms hide the copies.
            log.warning("commit failed after the write (%s); the batch will be delivered again", exc)

    def _write(self, writer: BatchWriter, per_message: list[MessageRows]) -> list[tuple[Message, str]]:
        """Write every message's rows; returns the messages ClickHouse rejected, with the reason."""
        try:
            self._write_rows(writer, per_message)
            return []
        except RowsRejected:
            pass
        # Some row cannot be stored: write message by message to find which.
        rejected = []
        for rows in per_message:
            try:
                self._write_rows(writer, [rows])
            except RowsRejected as exc:
                rejected.append((rows.message, f"rejected by the warehouse: {exc}"))
        return rejected

    def _write_rows(self, writer: BatchWriter, per_message: list[MessageRows]) -> None:
        ids = [i for rows in per_message for i in rows.event_ids]
        token = hashlib.sha256("\n".join(ids).encode()).hexdigest()
        writer.write(warehouse.LINKS_TABLE, warehouse.LINK_COLUMNS, links_body(per_message), token + ":links")
        if ids:
            writer.write(warehouse.EVENTS_TABLE, warehouse.EVENT_COLUMNS, events_body(per_message), token)

    def _attempt(self, action: Callable[[], None]) -> None:
        """Run `action`; while the warehouse, the dead-letter queue or the queue's
        commit is unavailable (consumer/transient.py), retry with backoff and commit
        nothing meanwhile. Once a stop is requested, retries go on for
        STOP_GRACE_SECONDS at most. Any other failure is raised at once."""
        delay = 0.5
        while True:
            try:
                return action()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if self._stop.is_set() and self._clock() - self._stop_at > STOP_GRACE_SECONDS:
                    raise Stopped() from exc
                log.warning("flush failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def _on_revoke(self, partitions: set[int]) -> None:
        """Partitions are leaving this worker (called inside poll): write and commit
        everything in hand first, so the next owner starts where this one stopped.
        If the warehouse is down this waits for it, like any flush: a member that
        waits too long is dropped from the group and its uncommitted messages go
        to the next owner."""
        try:
            self.drain()
        except BaseException as exc:
            # Raised again from step() once poll() returns: the queue's
            # client may swallow a callback's failure.
            self._revoke_failure = exc
            raise
        # While another member owned them, links may have been made that this one never saw.
        self._identity.forget_unlinked()

    def _raise_revoke_failure(self) -> None:
        failure, self._revoke_failure = self._revoke_failure, None
        if failure is not None:
            raise failure
