"""The embedded ClickHouse (chdb) behind the HTTP interface.

chdb hosts one engine per process, bound to one data directory, and hands out any number of connection
handles to it. A handle carries its own session state (current database, SET values) and serializes the
calls made on it, but separate handles run queries in parallel and chdb releases the GIL while they run.
So every request gets a fresh handle (cheap to open and close): its URL settings become plain SETs
with nothing to restore, and no query waits for another request's query. One extra handle, opened first and
closed last, keeps the engine up for the life of the server.

Insert bodies are spooled to files under `<data dir>/tmp/http_inserts` and inserted with `FROM INFILE`,
because chdb's streaming inserter loses storage-stage errors (see `Connection.insert`).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any

from chdb import _chdb  # importing via the package runs chdb's own loader setup

from deploy.warehouse.errors import CANNOT_WRITE_TO_FILE_DESCRIPTOR, NOT_ENOUGH_SPACE, ClickHouseError
from deploy.warehouse.sql import insert_from_file
from schemas.warehouse import quote_identifier

# chdb's stub for its C module declares almost none of it, connect() not among it.
_connect: Callable[[str], Any] = _chdb.connect  # type: ignore[attr-defined]

# ClickHouse expands these in a FROM INFILE name (no escaping): a spool path must not contain any.
_GLOB_CHARS = frozenset("*?{}[]")


def quote_literal(value: str) -> str:
    # Quoted values work for every setting type: ClickHouse converts string literals to the setting's type.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Engine:
    """Owns the chdb engine for one data directory; `connect()` opens a per-request connection."""

    def __init__(self, path: str):
        self.path = path
        self._owner = _connect(path)
        self._close_lock = threading.Lock()
        try:
            self.spool_dir, self._own_spool_dir = _spool_dir(path)
        except BaseException:
            self._owner.close()
            raise
        row = self._owner.query("SELECT version(), timezone(), hostName()", "TabSeparated").bytes()
        self.version, self.timezone, self.display_name = row.decode().rstrip("\n").split("\t")
        names = self._owner.query("SELECT name FROM system.formats WHERE is_output", "TabSeparated").bytes()
        self.output_formats = {name.lower(): name for name in names.decode().split()}

    def connect(self) -> Connection:
        return Connection(_connect(self.path), self.spool_dir)

    def close(self) -> None:
        """Shut the engine down; call only once no connection is in use."""
        with self._close_lock:
            if self._owner is not None:
                self._owner.close()
                self._owner = None
                if self._own_spool_dir:
                    shutil.rmtree(self.spool_dir, ignore_errors=True)


def _spool_dir(path: str) -> tuple[str, bool]:
    """The directory insert bodies are spooled to, emptied of what a crashed run may have left there, and
    whether it is a private temporary directory (used only when the data directory's path has glob
    characters, which FROM INFILE would expand) to remove on close."""
    spool = os.path.join(os.path.abspath(path), "tmp", "http_inserts")
    if _GLOB_CHARS.isdisjoint(spool):
        os.makedirs(spool, exist_ok=True)
        for name in os.listdir(spool):  # only this process opens the data directory
            try:
                os.unlink(os.path.join(spool, name))
            except OSError:
                pass
        return spool, False
    spool = tempfile.mkdtemp(prefix="flokit-warehouse-inserts-")
    if _GLOB_CHARS.isdisjoint(spool):
        return spool, True
    os.rmdir(spool)
    raise ValueError(
        f"cannot spool inserts: both {path!r} and the temp directory {spool!r} contain one of "
        f"{''.join(sorted(_GLOB_CHARS))}, which FROM INFILE reads as a glob"
    )


class Connection:
    """One chdb handle for one request. Every failure surfaces as ClickHouseError."""

    def __init__(self, handle, spool_dir: str):
        self._h = handle
        self._spool_dir = spool_dir

    def __enter__(self) -> Connection:
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

    def stream(
        self, sql: str | bytes, fmt: str, params: dict[str, str] | None = None
    ) -> Generator[Any, None, None]:
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
        """Insert `chunks` (data in input format `fmt`) with `statement`, an INSERT without FORMAT clause.

        Returns chdb's result (rows_written(), bytes_written(), elapsed()). Nothing is inserted unless every
        chunk was taken; a failure raised by `chunks` propagates as it is. As in ClickHouse, an insert big
        enough to be written as several blocks that fails in a later block keeps the earlier ones.

        Why not chdb's streaming inserter (send_insert / insert_append / insert_done): it reports parse
        errors, but an exception raised once a block goes to storage (a violated CONSTRAINT, TOO_MANY_PARTS,
        too many partitions per insert block, a failing materialized view, ...) is swallowed: the failing
        block and every block after it are dropped, yet insert_done returns success, with rows_written
        counting them all. `INSERT ... FROM INFILE` runs the same insert and raises those errors, so the
        body is streamed to a spool file (never held whole) and inserted from there; the file is always
        removed.
        """
        try:
            fd, path = tempfile.mkstemp(prefix="insert-", suffix=".data", dir=self._spool_dir)
        except OSError as exc:
            raise _spool_error(exc) from None
        try:
            try:
                for chunk in chunks:  # may raise ClickHouseError, or ConnectionError if the client goes away
                    view = memoryview(chunk)
                    while view:  # os.write may write less than asked
                        try:
                            view = view[os.write(fd, view) :]
                        except OSError as exc:
                            raise _spool_error(exc) from None
            finally:
                os.close(fd)
            sql = insert_from_file(statement, quote_literal(path), fmt)
            try:
                return self._h.query(sql, "TabSeparated")
            except Exception as exc:
                raise ClickHouseError.from_engine(RuntimeError(_infile_error_text(str(exc), path))) from None
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _spool_error(exc: OSError) -> ClickHouseError:
    kind = NOT_ENOUGH_SPACE if exc.errno in (errno.ENOSPC, errno.EDQUOT) else CANNOT_WRITE_TO_FILE_DESCRIPTOR
    return ClickHouseError.of(kind, f"Cannot spool the insert data: {exc.strerror or exc}")


_DOUBLE_PREFIX = re.compile(r"^Code: (\d+)\. DB::Exception: (?=Code: \1\. DB::Exception: )")
_TRAILING_NAME = re.compile(r"(\(version [^\n]*\))\. \([A-Z][A-Z0-9_]*\)\s*$")


def _infile_error_text(text: str, path: str) -> str:
    """Make a FROM INFILE failure read like the same failure of inline data.

    Errors raised while reading the file come wrapped twice (`Code: 27. DB::Exception: Code: 27.
    DB::Exception: ... (NAME) (version ...). (NAME)`) and name the spool file, which means nothing to
    the client; storage errors (a violated constraint, ...) come as they are.
    """
    if _DOUBLE_PREFIX.match(text):
        text = _TRAILING_NAME.sub(r"\1", _DOUBLE_PREFIX.sub("", text, count=1))
    text = text.replace(f": (in file/uri {path})", "")
    text = text.replace(": While executing File: data for INSERT was parsed from file", "")
    return text.replace(path, "<insert data>")
