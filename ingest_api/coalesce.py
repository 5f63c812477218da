"""Group commit: the requests a worker holds at one moment share one round trip.

A gevent worker serves dozens of requests at once. Each used to make its own
Redis call, which cost more worker CPU than anything of ours (bench/README.md).
A Coalescer collects what callers submit while its previous flush runs and
hands it all to the next flush as one list, so a round trip is paid per flush,
not per request. Nothing waits for a batch to fill: at low load a flush holds
one item and costs what a direct call did; under load flushes grow by themselves.

A flush that waits long (Kafka's acknowledgement) would make everything that
arrives meanwhile wait for it: such a Coalescer has several flushers, each taking
whatever is pending when it is free.

A caller may give a deadline (time.monotonic()): it waits no longer, whatever the
flush does. An item still pending then is withdrawn (no flush ever sees it); one
a flush already holds may still be done by it, after its caller has gone.

Flushers are threads started on first use, in the process that uses them
(gunicorn forks workers after import). Under gevent's monkey-patching they are
greenlets and the waits below are cooperative; elsewhere (tests, the Flask
test client) they are plain threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


class DeadlinePassed(Exception):
    """The caller's deadline passed before its item's flush answered. `withdrawn`: the item never reached a
    flush, so nothing of it was done; else a flush holds it and may still do it."""

    def __init__(self, name: str, withdrawn: bool):
        super().__init__(
            f"{name}: the deadline passed {'before' if withdrawn else 'during'} the item's flush"
        )
        self.withdrawn = withdrawn


class _Slot(Generic[T, R]):
    __slots__ = ("item", "deadline", "done", "result", "error", "taken", "withdrawn", "abandoned")

    def __init__(self, item: T, deadline: float | None):
        self.item = item
        self.deadline = deadline
        self.done = threading.Event()
        self.result: R | None = None  # set once its flush succeeded
        self.error: BaseException | None = None
        self.taken = False  # a flush holds it (set, like the two below, under the Coalescer's lock)
        self.withdrawn = False  # its caller's deadline passed before that: no flush will see it
        self.abandoned = False  # its caller's deadline passed during its flush


class Coalescer(Generic[T, R]):
    """`submit(item)` returns `flush(items)[i]` for its item, from one call of
    `flush` shared with whatever else was submitted meanwhile. If `flush` raises,
    every caller of that flush gets the exception.

    `most`: at most this many items per flush (None: all that are pending); with 1 and
    several flushers, a pool of callers. `on_abandoned(item, result)` runs on the flusher
    for an item whose flush succeeded after its caller's deadline had passed."""

    def __init__(
        self,
        flush: Callable[[list[T]], Sequence[R]],
        name: str,
        flushers: int = 1,
        *,
        most: int | None = None,
        on_abandoned: Callable[[T, R], None] | None = None,
    ):
        self._flush = flush
        self._name = name
        self._flushers = flushers
        self._most = most
        self._on_abandoned = on_abandoned
        self._cond = threading.Condition()
        self._pending: list[_Slot[T, R]] = []
        self._pid: int | None = None

    def submit(self, item: T, deadline: float | None = None) -> R:
        """`item`'s result, or DeadlinePassed once `deadline` passes (the item withdrawn if no flush has
        it)."""
        return self.wait(self.post(item, deadline), deadline, withdraw=True)

    def post(self, item: T, deadline: float | None = None) -> _Slot[T, R]:
        """Hand `item` to the next flush without waiting for it (`submit` waits). A flusher drops an item
        whose deadline has passed instead of flushing it."""
        slot: _Slot[T, R] = _Slot(item, deadline)
        with self._cond:
            if self._pid != os.getpid():  # first use in this process
                self._pid = os.getpid()
                for n in range(self._flushers):
                    threading.Thread(target=self._run, name=f"coalesce-{self._name}-{n}", daemon=True).start()
            self._pending.append(slot)
            self._cond.notify()
        return slot

    def wait(self, slot: _Slot[T, R], deadline: float | None, *, withdraw: bool = False) -> R:
        """The result of a posted item, waited for until `deadline` at most (then DeadlinePassed; with
        `withdraw`, an item no flush holds yet is withdrawn, else it stays for the next flush)."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not slot.done.wait(timeout):
            with self._cond:
                if not slot.done.is_set():
                    if not slot.taken and withdraw:
                        slot.withdrawn = True
                        raise DeadlinePassed(self._name, withdrawn=True)
                    slot.abandoned = True
                    raise DeadlinePassed(self._name, withdrawn=False)
        if slot.error is not None:
            raise slot.error
        return cast(R, slot.result)  # done without an error: its flush set it

    def _take(self) -> list[_Slot[T, R]]:
        with self._cond:
            while True:
                while not self._pending:
                    self._cond.wait()
                now = time.monotonic()
                taken: list[_Slot[T, R]] = []
                kept: list[_Slot[T, R]] = []
                for slot in self._pending:
                    if slot.withdrawn:
                        continue
                    if slot.deadline is not None and slot.deadline <= now:
                        slot.withdrawn = True  # its caller is answered (or about to be) without it
                        slot.error = DeadlinePassed(self._name, withdrawn=True)
                        slot.done.set()
                    elif self._most is None or len(taken) < self._most:
                        slot.taken = True
                        taken.append(slot)
                    else:
                        kept.append(slot)
                self._pending = kept
                if kept:
                    self._cond.notify()  # for another free flusher
                if taken:
                    return taken

    def _run(self) -> None:
        while True:
            slots = self._take()
            try:
                results = self._flush([slot.item for slot in slots])
                if len(results) != len(slots):
                    raise RuntimeError(f"{self._name}: {len(results)} results for {len(slots)} items")
                for slot, result in zip(slots, results, strict=True):
                    slot.result = result
            except Exception as exc:  # the callers answer for it (a 503, a 500): the flusher lives on
                for slot in slots:
                    slot.error = exc
            with self._cond:  # so that a caller whose deadline passes now is either answered or abandons
                for slot in slots:
                    slot.done.set()
                abandoned = [slot for slot in slots if slot.abandoned and slot.error is None]
            if self._on_abandoned is not None:
                for slot in abandoned:
                    try:
                        self._on_abandoned(slot.item, cast(R, slot.result))
                    except Exception:  # the flusher lives on
                        log.exception("%s: undoing an abandoned item failed", self._name)
