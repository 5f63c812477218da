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

Flushers are threads started on first use, in the process that uses them
(gunicorn forks workers after import). Under gevent's monkey-patching they are
greenlets and the waits below are cooperative; elsewhere (tests, the Flask
test client) they are plain threads.
"""
from __future__ import annotations

import os
import threading
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Slot:
    __slots__ = ("item", "done", "result", "error")

    def __init__(self, item):
        self.item = item
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None


class Coalescer(Generic[T, R]):
    """`submit(item)` returns `flush(items)[i]` for its item, from one call of
    `flush` shared with whatever else was submitted meanwhile. If `flush` raises,
    every caller of that flush gets the exception."""

    def __init__(self, flush: Callable[[list[T]], Sequence[R]], name: str, flushers: int = 1):
        self._flush = flush
        self._name = name
        self._flushers = flushers
        self._cond = threading.Condition()
        self._pending: list[_Slot] = []
        self._pid: int | None = None

    def submit(self, item: T) -> R:
        slot = self.post(item)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def post(self, item: T) -> _Slot:
        """Hand `item` to the next flush without waiting for it (`submit` waits)."""
        slot = _Slot(item)
        with self._cond:
            if self._pid != os.getpid():  # first use in this process
                self._pid = os.getpid()
                for n in range(self._flushers):
                    threading.Thread(target=self._run, name=f"coalesce-{self._name}-{n}", daemon=True).start()
            self._pending.append(slot)
            self._cond.notify()
        return slot

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                slots, self._pending = self._pending, []
            try:
                results = self._flush([slot.item for slot in slots])
                if len(results) != len(slots):
                    raise RuntimeError(f"{self._name}: {len(results)} results for {len(slots)} items")
                for slot, result in zip(slots, results):
                    slot.result = result
            except Exception as exc:  # the callers answer for it (a 503, a 500): the flusher lives on
                for slot in slots:
                    slot.error = exc
            for slot in slots:
                slot.done.set()
