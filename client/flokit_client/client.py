"""The client: track() queues, one background thread sends.

Every queued event gets exactly one outcome: delivered, rejected (the server's verdict, or a value JSON cannot
carry), or failed (retries used up, the client closed first); the last two reach on_error. Outcomes come in
tracking order, which is what flush() waits on.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from .delivery import BODY_OVERHEAD, Sender
from .events import Timestamp, UnserializableEvent, build_event, encode_event

log = logging.getLogger("flokit_client")

# on_error(event, error code, message): the event as it was tracked (its JSON document).
ErrorCallback = Callable[[dict[str, Any], str, str], None]
MAX_BATCH_SIZE = 1000  # the API's limit per batch request
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # the server's default FLOKIT_MAX_BODY_BYTES
# After close()'s timeout, how long the sender gets to report what is left to on_error.
CLOSE_GRACE_SECONDS = 1.0


@dataclass(frozen=True)
class Stats:
    """Counts since the client was made. tracked = delivered + rejected + failed + dropped + pending."""

    tracked: int = 0  # track() calls that got as far as an event
    delivered: int = 0  # accepted by the server: durably queued
    rejected: int = 0  # refused by the server (or not serialisable): reported to on_error
    failed: int = 0  # no verdict: retries used up, or the client closed first; reported to on_error
    dropped: int = 0  # refused by track(): the queue was full, or the client closed
    pending: int = 0  # queued or being sent
    requests: int = 0  # batch requests sent, retries included
    retries: int = 0  # requests sent again
    rate_limited: int = 0  # 429 answers
    splits: int = 0  # batches the server found too large (413), sent as two halves


class Client:
    """A FloKit events client. Thread-safe; make one per process and share it.

    `on_full` says what track() does when `max_queue_size` events (or `max_queue_bytes` of them) wait:
    "drop" (the default) drops the new event and counts it in stats().dropped, so the app never waits;
    "block" waits for room.
    """

    def __init__(
        self,
        api_key: str,
        host: str = "http://127.0.0.1:8080",
        *,
        on_error: ErrorCallback | None = None,
        flush_interval: float = 1.0,
        max_batch_size: int = MAX_BATCH_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_queue_size: int = 10_000,
        max_queue_bytes: int = 4 * DEFAULT_MAX_BODY_BYTES,
        on_full: str = "drop",
        gzip: bool = True,
        max_retries: int = 10,
        timeout: float = 15.0,
        shutdown_timeout: float = 10.0,
    ):
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty str (fk_...)")
        if on_full not in ("drop", "block"):
            raise ValueError(f"on_full must be 'drop' or 'block', not {on_full!r}")
        if not 1 <= max_batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"max_batch_size must be 1 to {MAX_BATCH_SIZE}")
        self._api_key, self._host = api_key, host
        self._on_error = on_error
        self._flush_interval = flush_interval
        self._max_batch_size = max_batch_size
        self._max_batch_bytes = max_batch_bytes
        self._max_queue_size = max_queue_size
        self._max_queue_bytes = max_queue_bytes
        self._block = on_full == "block"
        self._gzip, self._max_retries, self._timeout = gzip, max_retries, timeout
        self.shutdown_timeout = shutdown_timeout
        self._fresh_state()
        _register(self)

    def _fresh_state(self) -> None:
        """Everything that belongs to one process (run again in a forked child: see _after_fork)."""
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # queue, outcomes, flush requests
        self._queue: collections.deque[tuple[bytes, float]] = collections.deque()  # (event JSON, when queued)
        self._queued_bytes = 0
        self._pending = self._pending_bytes = 0  # queued or being sent
        self._enqueued = self._finished = 0  # events that entered the queue / got their outcome (in order)
        self._flush_through = 0  # send without waiting for the interval until this many have finished
        self._counts: collections.Counter[str] = collections.Counter()
        self._closing = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sender: Sender | None = None

    # --- the app's side ---------------------------------------------------------------------------------

    def track(
        self,
        event: str,
        *,
        user_id: str | None = None,
        anonymous_id: str | None = None,
        timestamp: Timestamp = None,
        properties: Mapping[str, Any] | None = None,
    ) -> bool:
        """Queue one event and return at once (with on_full="block", once there is room): True if queued.

        Raises only for arguments of the wrong type (TypeError; a naive datetime, ValueError). The server
        checks the values; what it refuses reaches on_error. `timestamp` defaults to now, in UTC."""
        document = build_event(event, user_id, anonymous_id, timestamp, properties)
        try:
            data = encode_event(document)
        except UnserializableEvent as exc:
            with self._lock:
                self._counts["tracked"] += 1
                self._counts["rejected"] += 1
            self._call_on_error(document, "unserializable_event", str(exc))
            return False
        with self._lock:
            self._counts["tracked"] += 1
            # The sender thread never waits for room (on_error calling track() would wait for itself).
            block = self._block and threading.current_thread() is not self._thread
            while block and not self._closing and not self._has_room(len(data)):
                self._changed.wait()
            if self._closing or not self._has_room(len(data)):
                self._counts["dropped"] += 1
                first = self._counts["dropped"] == 1
                if first or self._counts["dropped"] % 10_000 == 0:
                    log.warning(
                        "event dropped: %s; %d dropped so far (stats().dropped)",
                        "the client is closed" if self._closing else "the queue is full",
                        self._counts["dropped"],
                    )
                return False
            self._queue.append((data, time.monotonic()))
            self._queued_bytes += len(data)
            self._pending += 1
            self._pending_bytes += len(data)
            self._enqueued += 1
            if self._thread is None:
                self._start()
            # Wake the sender only when it has something new to decide: a first event starts the interval,
            # a full batch goes at once.
            if (
                len(self._queue) == 1
                or len(self._queue) == self._max_batch_size
                or self._queued_bytes >= self._batch_bytes()
            ):
                self._changed.notify_all()
        return True

    def _has_room(self, size: int) -> bool:
        if self._pending == 0:
            return True  # an event larger than max_queue_bytes still goes alone, so "block" cannot hang on it
        return self._pending < self._max_queue_size and self._pending_bytes + size <= self._max_queue_bytes

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued so far now and wait until each event has an outcome (delivered, rejected or
        failed), at most `timeout` seconds. True if they all have."""
        if threading.current_thread() is self._thread:
            return False  # called from on_error: the sender cannot wait for itself
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._enqueued
            self._flush_through = max(self._flush_through, target)
            self._changed.notify_all()
            while self._finished < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the sender, within `timeout` seconds (default: shutdown_timeout). Events without
        an outcome by then are reported to on_error as `client_closed`, in up to one more second (a request
        already on the wire may finish first). Later track() calls drop their events. True if everything
        queued got an outcome within `timeout`. Runs at interpreter exit too (atexit)."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closing = True
            self._changed.notify_all()  # blocked track() calls return
        flushed = self.flush(timeout)
        self._stopping.set()
        with self._lock:
            self._changed.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0) + CLOSE_GRACE_SECONDS)
            if not thread.is_alive() and self._sender is not None:
                self._sender.close()
        return flushed

    def stats(self) -> Stats:
        with self._lock:
            return Stats(pending=self._pending, **self._counts)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the sender thread ------------------------------------------------------------------------------

    def _start(self) -> None:
        self._report = _Report(self)
        self._sender = Sender(
            self._api_key,
            self._host,
            compress=self._gzip,
            timeout=self._timeout,
            max_retries=self._max_retries,
            body_limit=self._max_batch_bytes,
            report=self._report,
            wait=lambda seconds: not self._stopping.wait(seconds),
        )
        self._thread = threading.Thread(
            target=self._run, args=(self._sender,), name="flokit-client-sender", daemon=True
        )
        self._thread.start()

    def _run(self, sender: Sender) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                if self._stopping.is_set():
                    for event in batch:
                        self._report.failed(
                            event, "client_closed", "the client was closed before this event was sent"
                        )
                else:
                    sender.deliver(batch, str(uuid.uuid4()))
            except Exception:  # a bug must not stop the sender; the batch is reported, the next one goes
                log.exception(
                    "flokit_client: unexpected error while sending a batch of %d events", len(batch)
                )
                for event in batch:
                    self._report.failed(event, "client_error", "unexpected error in the client; see its log")
            finally:
                with self._lock:
                    self._finished += len(batch)
                    self._pending -= len(batch)
                    self._pending_bytes -= sum(map(len, batch))
                    self._changed.notify_all()

    def _next_batch(self) -> list[bytes] | None:
        """Wait until a batch is due (full, its oldest event flush_interval old, a flush, closing), take it.
        None: the client is closed and nothing is left."""
        with self._lock:
            while True:
                if self._queue:
                    due_at = self._queue[0][1] + self._flush_interval
                    if (
                        len(self._queue) >= self._max_batch_size
                        or self._queued_bytes >= self._batch_bytes()
                        or self._finished < self._flush_through
                        or self._stopping.is_set()
                        or time.monotonic() >= due_at
                    ):
                        return self._take()
                    self._changed.wait(due_at - time.monotonic())
                elif self._stopping.is_set():
                    return None
                else:
                    self._changed.wait()

    def _batch_bytes(self) -> int:
        sender = self._sender  # there is one once an event is queued (track() starts it)
        limit = self._max_batch_bytes if sender is None else min(self._max_batch_bytes, sender.body_limit)
        return limit - BODY_OVERHEAD

    def _take(self) -> list[bytes]:
        limit = self._batch_bytes()
        batch: list[bytes] = []
        size = 0
        while self._queue and len(batch) < self._max_batch_size:
            data = self._queue[0][0]
            if batch and size + len(data) + 1 > limit:
                break
            self._queue.popleft()
            batch.append(data)
            size += len(data) + 1  # and its comma
        self._queued_bytes -= sum(map(len, batch))
        return batch

    def _call_on_error(self, event: dict[str, Any], error: str, message: str) -> None:
        if self._on_error is None:
            log.warning("event %r not delivered: %s: %s", event.get("event"), error, message)
            return
        try:
            self._on_error(event, error, message)
        except Exception:
            log.exception("flokit_client: on_error raised")

    def _after_fork(self) -> None:
        # The child has no sender thread and shares the parent's connection; the parent's queued events are
        # the parent's to send (sending them here too would send them twice). Start again, empty.
        self._fresh_state()


class _Report:
    """The outcomes of the sender's batches, counted and passed to on_error."""

    def __init__(self, client: Client):
        self._client = client

    def _count(self, name: str, n: int = 1) -> None:
        with self._client._lock:
            self._client._counts[name] += n

    def delivered(self, count: int) -> None:
        self._count("delivered", count)

    def rejected(self, event: bytes, error: str, message: str) -> None:
        self._count("rejected")
        self._client._call_on_error(json.loads(event), error, message)

    def failed(self, event: bytes, error: str, message: str) -> None:
        self._count("failed")
        self._client._call_on_error(json.loads(event), error, message)

    def sending(self) -> None:
        self._count("requests")

    def retrying(self, status: int | None) -> None:
        self._count("retries")
        if status == 429:
            self._count("rate_limited")

    def split(self) -> None:
        self._count("splits")


# --- process lifecycle: exit and fork -----------------------------------------------------------------------

_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_clients_lock = threading.Lock()


def _register(client: Client) -> None:
    with _clients_lock:
        _clients.add(client)


@atexit.register
def _close_all_at_exit() -> None:
    with _clients_lock:
        clients = list(_clients)
    for client in clients:
        if not client._closing or client._pending:
            client.close()


def _after_fork_in_child() -> None:
    global _clients_lock
    _clients_lock = threading.Lock()
    for client in list(_clients):
        client._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
