"""Spreading connections evenly over the front door's workers.

Every worker waits on the same listening socket, and whichever is awake when connections arrive accepts
them. A client that opens its keep-alive connections at once (a back end's pool, a load balancer, wrk)
often had them all land on one worker, which then did all the work while the other idled
(bench/README.md). Used with FLOKIT_CONNECTION_BALANCE=on (deploy/gunicorn_worker.py).

Each worker publishes how many connections it holds in a small table shared by all of them: an anonymous
shared mapping made when this module is imported, which gunicorn does in its master (to load the worker
class) before it forks the workers. A worker that holds more than `SLACK` connections above the least
loaded live worker leaves the next connection to the others; it looks again `RETRY_SECONDS` later, and
after `MAX_WAIT_SECONDS` accepts anyway, so a busy or stuck peer never leaves a connection waiting long.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

SLOTS = 64  # workers are given slots by their gunicorn age, modulo this
SLACK = 1
RETRY_SECONDS = 0.002
MAX_WAIT_SECONDS = 0.05
STALE_SECONDS = (
    5.0  # a slot not written for this long is a worker that is gone (workers write it every second)
)

_SLOT = struct.Struct(
    "qqd"
)  # pid, connections held, when written (CLOCK_MONOTONIC, the same for every process)
TABLE_BYTES = SLOTS * _SLOT.size
_TABLE = mmap.mmap(-1, TABLE_BYTES)  # MAP_SHARED | MAP_ANONYMOUS: shared with the processes forked after


class ConnectionBalance:
    """One worker's view of the table: `publish` its count, `should_wait` before accepting one more."""

    def __init__(self, age: int, table: mmap.mmap = _TABLE, pid: int | None = None):
        self._table = table
        self._slot = (age % SLOTS) * _SLOT.size
        self._pid = pid or os.getpid()
        self._waiting_since: float | None = None

    def publish(self, connections: int, now: float | None = None) -> None:
        _SLOT.pack_into(
            self._table, self._slot, self._pid, connections, time.monotonic() if now is None else now
        )

    def leave(self) -> None:
        """This worker accepts no more (it is stopping): the others stop comparing themselves with it."""
        _SLOT.pack_into(self._table, self._slot, 0, 0, 0.0)

    def should_wait(self, connections: int) -> bool:
        """Whether to leave the next connection to a less loaded worker (and publish `connections`)."""
        now = time.monotonic()
        self.publish(connections, now)
        fewest = None
        for offset in range(0, TABLE_BYTES, _SLOT.size):
            pid, held, written = _SLOT.unpack_from(self._table, offset)
            if (
                pid
                and pid != self._pid
                and now - written < STALE_SECONDS
                and (fewest is None or held < fewest)
            ):
                fewest = held
        if fewest is None or connections <= fewest + SLACK:
            self._waiting_since = None
            return False
        if self._waiting_since is None:
            self._waiting_since = now
        if now - self._waiting_since >= MAX_WAIT_SECONDS:
            self._waiting_since = None
            return False
        return True
