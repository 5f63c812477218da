"""HTTP sessions (`session_id=`), kept as the SET and USE statements run in them.

A real ClickHouse session keeps a query context between requests. Here every request runs on a fresh chdb
handle, so a session is the list of its successful SET/USE statements, replayed on each new handle before
that request's own URL settings (which, as in ClickHouse, apply to that one query only). Temporary tables do
not outlive their request. As in ClickHouse, one session runs one query at a time (a query that arrives
while the session's previous one is still finishing waits up to LOCK_WAIT_SECONDS for it), and expires after
`session_timeout` seconds unused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from deploy.warehouse.errors import SESSION_IS_LOCKED, SESSION_NOT_FOUND, ClickHouseError

LOCK_WAIT_SECONDS = 1.0


class Session:
    def __init__(self, timeout: float):
        self.lock = threading.Lock()
        self.statements: list[bytes] = []
        self.timeout = timeout
        self.last_used = time.monotonic()

    def remember(self, statement: bytes) -> None:
        self.statements.append(statement)


class Sessions:
    """All live sessions, by id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, Session] = {}

    @contextmanager
    def use(self, session_id: str, timeout: float, check: bool) -> Iterator[Session | None]:
        """Hold the session for one request (None without a session id)."""
        if not session_id:
            yield None
            return
        with self._lock:
            self._expire()
            session = self._items.get(session_id)
            if session is None:
                if check:
                    raise ClickHouseError.of(SESSION_NOT_FOUND, f"Session {session_id} not found")
                session = self._items[session_id] = Session(timeout)
            session.last_used = time.monotonic()  # not expired by anyone while this waits for it below
        # The session's previous request may still be finishing: its client already has the whole response
        # (sent inside the session) and may send the next query before that request's thread lets go. So
        # wait a moment for it; a truly concurrent query in one session still gets SESSION_IS_LOCKED.
        if not session.lock.acquire(timeout=LOCK_WAIT_SECONDS):
            raise ClickHouseError.of(
                SESSION_IS_LOCKED, f"Session {session_id} is locked by a concurrent client"
            )
        session.timeout = timeout
        try:
            yield session
        finally:
            session.last_used = time.monotonic()
            session.lock.release()

    def _expire(self) -> None:
        now = time.monotonic()
        for key, session in list(self._items.items()):
            if now - session.last_used > session.timeout and not session.lock.locked():
                del self._items[key]
