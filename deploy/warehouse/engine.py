"""The embedded ClickHouse (chdb) behind the HTTP interface.

chdb hosts one engine per process, bound to one data directory, and hands out any number of connection
handles to it. A handle carries its own session state (current database, SET values) and serializes the
calls made on it, but separate handles run queries in parallel and chdb releases the GIL while they run.
So every request gets a fresh handle (about 0.2 ms to open and close): its URL settings become plain SETs
with nothing to restore, and no query waits for another request's query. One extra handle, opened first and
closed last, keeps the engine up for the life of the server.
"""
from __future__ import annotations

import threading
from typing import Iterable, Iterator

from chdb import _chdb  # importing via the package runs chdb's own loader setup

from deploy.warehouse.errors import ClickHouseError


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_literal(value: str) -> str:
    # Quoted values work for every setting type: ClickHouse converts string literals to the setting's type.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    """Owns the chdb engine for one data directory; `connect()` opens a per-request connection."""

    def __init__(self, path: str):
        self.path = path
        self._owner = _chdb.connect(path)
        self._close_lock = threading.Lock()
        row = self._owner.query("SELECT version(), timezone(), hostName()", "TabSeparated").bytes()
        self.version, self.timezone, self.display_name = row.decode().rstrip("\n").split("\t")
        names = self._owner.query("SELECT name FROM system.formats WHERE is_output", "TabSeparated").bytes()
        self.output_formats = {name.lower(): name for name in names.decode().split()}

    def connect(self) -> "Connection":
        return Connection(_chdb.connect(self.path))

    def close(self) -> None:
        """Shut the engine down; call only once no connection is in use."""
        with self._close_lock:
            if self._owner is not None:
                self._owner.close()
                self._owner = None


class Connection:
    """One chdb handle for one request. Every failure surfaces as ClickHouseError."""

    def __init__(self, handle):
        self._h = handle

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._h is not None:
            self._h.close()
            self._h = None

    def prepare(self, database: str, settings: dict[str, str], replay: Iterable[bytes] = ()) -> None:
        """Replay a session's SET/USE statements, then apply this request's database and settings."""
        for statement in replay:
            self.run(statement)
        if database:
            self.run(f"USE {quote_identifier(database)}")
        if settings:
            self.run("SET " + ", ".join(f"{k} = {quote_literal(v)}" for k, v in settings.items()))

    def run(self, sql: str | bytes, fmt: str = "TabSeparated", params: dict[str, str] | None = None):
        """Run a query to completion; returns chdb's result (bytes(), get_memview(), rows_read(), ...)."""
        try:
            return self._h.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from None

    def classify(self, sql: str) -> dict:
        """chdb's parse-only classification: query_class (READ_ONLY, MUTATING, ...) and statement_count."""
        return self._h.classify_query(sql)

    def stream(self, sql: str, fmt: str, params: dict[str, str] | None = None) -> Iterator:
        """Run a query block by block: yields chdb results, one per block, each already in `fmt`."""
        try:
            stream = self._h.send_query(sql, fmt, params=params or {})
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from None
        done = False
        try:
            while True:
                try:
                    result = self._h.streaming_fetch_result(stream)
                except Exception as exc:
                    done = True  # a failed stream is finished already
                    raise ClickHouseError.from_engine(exc) from None
                if result is None or result.rows_read() == 0:
                    done = True
                    return
                yield result
        finally:
            if not done:  # the client went away mid-stream
                try:
                    self._h.streaming_cancel_query(stream)
                except Exception:
                    pass

    def insert(self, statement: str, fmt: str, chunks: Iterable[bytes]):
        """Stream `chunks` (data in input format `fmt`) into `statement`, an INSERT without FORMAT clause.

        Returns chdb's insert result (rows_written(), bytes_written()). The insert commits only when
        every chunk was taken; any failure, including one raised by `chunks`, cancels it.
        """
        try:
            inserter = self._h.send_insert(statement, fmt)
        except Exception as exc:
            raise ClickHouseError.from_engine(exc) from None
        try:
            for chunk in chunks:
                self._h.insert_append(inserter, chunk)
            return self._h.insert_done(inserter)
        except BaseException as exc:
            try:
                self._h.insert_cancel(inserter)
            except Exception:
                pass
            if isinstance(exc, (ClickHouseError, RuntimeError)):
                raise ClickHouseError.from_engine(exc) from None
            raise
