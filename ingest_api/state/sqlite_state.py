"""Front-door state in one SQLite file (embedded mode): shared by every
gunicorn worker on the machine through SQLite's own locking, no server needed."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from ..auth import new_key, secret_matches, split_key
from ..idempotency import IdempotencyRecord, decide_idempotency, failed_record, finished_record
from ..rate_limit import RateDecision, gcra_run
from .base import ApiKeyInfo, FrontDoorState, IdempotencyOutcome, StateUnavailable, StoredResponse, Workspace

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workspaces (
    name TEXT PRIMARY KEY, rate_limit INTEGER, strict_events INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, workspace TEXT NOT NULL, secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rate_limits (workspace TEXT PRIMARY KEY, tat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    workspace TEXT NOT NULL, key TEXT NOT NULL, record BLOB NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (workspace, key));
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
"""


class SqliteState(FrontDoorState):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self._path = Path(path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per process, used by one request at a time: a
        # thread-local (or greenlet-local, under gevent) connection would mean
        # one connection per request. Each use is a few tens of microseconds.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self._path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)  # executescript manages its own transaction

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so a
        read-modify-write cannot interleave with another process's."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # "database is locked" after the 10 s busy timeout
                raise StateUnavailable(f"SQLite {self._path}: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # keys and workspaces
    def create_key(self, workspace: str) -> str:
        plaintext, key_id, secret_hash = new_key()
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO workspaces (name) VALUES (?)", (workspace,))
            db.execute(
                "INSERT INTO api_keys (key_id, workspace, secret_hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, workspace, secret_hash, time.time()),
            )
        return plaintext

    def list_keys(self) -> list[ApiKeyInfo]:
        with self._read() as db:
            rows = db.execute(
                "SELECT key_id, workspace, created_at, revoked FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [ApiKeyInfo(k, w, c, bool(r)) for k, w, c, r in rows]

    def revoke_key(self, key_id: str) -> bool:
        with self._tx() as db:
            return db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,)).rowcount > 0

    def authenticate(self, token: str) -> Workspace | None:
        parts = split_key(token)
        if parts is None:
            return None
        key_id, secret = parts
        with self._read() as db:
            row = db.execute(
                "SELECT k.secret_hash, k.revoked, w.name, w.rate_limit, w.strict_events FROM api_keys k"
                " JOIN workspaces w ON w.name = k.workspace WHERE k.key_id = ?",
                (key_id,),
            ).fetchone()
        if row is None or not secret_matches(secret, row[0]) or row[1]:
            return None
        return Workspace(row[2], row[3], bool(row[4]))

    def configure_workspace(
        self, name: str, *, rate_limit_per_minute: int | None = None, strict_events: bool | None = None
    ) -> Workspace:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO workspaces (name) VALUES (?)", (name,))
            if rate_limit_per_minute is not None:
                db.execute(
                    "UPDATE workspaces SET rate_limit = ? WHERE name = ?", (rate_limit_per_minute, name)
                )
            if strict_events is not None:
                db.execute(
                    "UPDATE workspaces SET strict_events = ? WHERE name = ?", (int(strict_events), name)
                )
            row = db.execute(
                "SELECT rate_limit, strict_events FROM workspaces WHERE name = ?", (name,)
            ).fetchone()
        return Workspace(name, row[0], bool(row[1]))

    def list_workspaces(self) -> list[Workspace]:
        with self._read() as db:
            rows = db.execute(
                "SELECT name, rate_limit, strict_events FROM workspaces ORDER BY name"
            ).fetchall()
        return [Workspace(n, r, bool(s)) for n, r, s in rows]

    # admission
    def admit_many(
        self, requests: Sequence[tuple[str, float, int]], default_limit: int
    ) -> list[tuple[Workspace, list[RateDecision]] | None]:
        admitted: list[tuple[Workspace, list[RateDecision]] | None] = []
        for token, now, count in requests:
            workspace = self.authenticate(token)
            admitted.append(
                None
                if workspace is None
                else (
                    workspace,
                    self._count(workspace.name, workspace.rate_limit_per_minute or default_limit, now, count),
                )
            )
        return admitted

    def _count(self, workspace: str, limit: int, now: float, count: int) -> list[RateDecision]:
        with self._tx() as db:
            row = db.execute("SELECT tat FROM rate_limits WHERE workspace = ?", (workspace,)).fetchone()
            decisions, new_tat = gcra_run(row[0] if row else None, now, limit, count)
            if new_tat is not None:
                db.execute(
                    "INSERT INTO rate_limits (workspace, tat) VALUES (?, ?)"
                    " ON CONFLICT (workspace) DO UPDATE SET tat = excluded.tat",
                    (workspace, new_tat),
                )
        return decisions

    # idempotency
    def idempotency_begin(
        self, workspace: str, key: str, fingerprint: str, event_ids: list[str], now: float
    ) -> IdempotencyOutcome:
        with self._tx() as db:
            row = db.execute(
                "SELECT record FROM idempotency WHERE workspace = ? AND key = ?", (workspace, key)
            ).fetchone()
            outcome, record = decide_idempotency(
                orjson.loads(row[0]) if row else None, fingerprint, event_ids, now
            )
            if record is not None:
                self._put(db, workspace, key, record)
                # Keep the table small: records past the window answer nothing.
                db.execute("DELETE FROM idempotency WHERE created_at < ?", (now - 2 * 24 * 3600,))
        return outcome

    @staticmethod
    def _put(db: sqlite3.Connection, workspace: str, key: str, record: IdempotencyRecord) -> None:
        db.execute(
            "INSERT INTO idempotency (workspace, key, record, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (workspace, key)"
            " DO UPDATE SET record = excluded.record, created_at = excluded.created_at",
            (workspace, key, orjson.dumps(record), record["created_at"]),
        )

    def _update(
        self, workspace: str, key: str, change: Callable[[IdempotencyRecord], IdempotencyRecord]
    ) -> None:
        with self._tx() as db:
            row = db.execute(
                "SELECT record FROM idempotency WHERE workspace = ? AND key = ?", (workspace, key)
            ).fetchone()
            if row:
                self._put(db, workspace, key, change(orjson.loads(row[0])))

    def idempotency_finish(self, workspace: str, key: str, response: StoredResponse) -> None:
        self._update(workspace, key, lambda rec: finished_record(rec, response))

    def idempotency_fail(self, workspace: str, key: str) -> None:
        self._update(workspace, key, failed_record)

    def close(self) -> None:
        with self._lock:
            self._db.close()
