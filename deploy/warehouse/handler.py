"""The request handler: ClickHouse's HTTP interface, the subset clickhouse-connect and curl use.

    GET /ping, GET /                  -> "Ok.\n"
    GET /?query=SELECT ...            -> result in the query's FORMAT, else default_format, else TabSeparated
    POST / (query in body)            -> same; the body is appended to a `query=` parameter after a newline
    POST /?query=INSERT ... FORMAT X + data, or POST / with "INSERT ... FORMAT X\n<data>" as the body

Inserts with inline data are streamed to a spool file and inserted from it (engine.Connection.insert says
why not through chdb's streaming inserter); other queries run on their own chdb handle and are streamed back
block by block, or buffered first when the client asked for `wait_end_of_query=1` (clickhouse-connect does
for ordinary queries) or the format has a header/footer that per-block output would repeat.
"""

from __future__ import annotations

import io
import itertools
import secrets
import socket
import sys
import traceback
import uuid
from collections.abc import Generator, Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import orjson

from deploy.warehouse.codec import Encoder, RequestBody, choose_encoding, decoded
from deploy.warehouse.errors import SYNTAX_ERROR, ClickHouseError
from deploy.warehouse.request import QueryRequest
from deploy.warehouse.sql import Incomplete, InlineInsert, first_token, output_format, split_insert

if TYPE_CHECKING:
    from deploy.warehouse.engine import Engine
    from deploy.warehouse.sessions import Sessions


class Serving(Protocol):
    """What a handler asks of the server that runs it (deploy/warehouse/server.py's WarehouseServer; named by
    this protocol rather than imported, since the server imports this module)."""

    idle_timeout: float
    io_timeout: float
    stopping: bool
    engine: Engine
    sessions: Sessions

    def request_started(self) -> bool: ...

    def request_finished(self) -> None: ...


# An INSERT whose data start is not found within this many bytes is
# handed to the engine whole (to fail there).
MAX_HEAD = 1 << 20

# Formats whose per-block output concatenates into one valid document (no header, footer or names row).
STREAMABLE = frozenset(
    {
        "Native",
        "TabSeparated",
        "TSV",
        "TabSeparatedRaw",
        "TSVRaw",
        "CSV",
        "RowBinary",
        "JSONEachRow",
        "JSONCompactEachRow",
        "JSONStringsEachRow",
        "Values",
        "LineAsString",
    }
)


def content_type(fmt: str | None) -> str:
    if fmt is None:
        return "text/plain; charset=UTF-8"
    if fmt.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values; charset=UTF-8"
    if fmt.startswith("CSV"):
        return "text/csv; charset=UTF-8; header=" + ("present" if "WithNames" in fmt else "absent")
    if fmt.endswith("EachRow"):
        return "application/x-ndjson; charset=UTF-8"
    if fmt.startswith("JSON"):
        return "application/json; charset=UTF-8"
    if fmt in (
        "Native",
        "RowBinary",
        "Parquet",
        "Arrow",
        "ArrowStream",
        "ORC",
        "Avro",
        "MsgPack",
        "Protobuf",
    ):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clickhouse-connect's connection pool expects
    server_version = "FloKitWarehouse"
    sys_version = ""
    # What socketserver gives this handler (its stubs say BaseServer and BufferedIOBase).
    server: Serving  # type: ignore[assignment]  # BaseHTTPRequestHandler types it as socketserver's
    rfile: io.BufferedReader

    def log_message(self, format, *args) -> None:  # noqa: A002  one line per request is noise here
        pass

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without NODELAY, Nagle plus the client's delayed ACK
        # add ~40 ms to every small response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        # Wait for the next request with the idle timeout, and let the server know while one is in flight,
        # so shutdown can close idle keep-alive connections and wait for busy ones.
        try:
            self.connection.settimeout(self.server.idle_timeout)
            if not self.rfile.peek(1):
                self.close_connection = True
                return
            self.connection.settimeout(self.server.io_timeout)
        except OSError:
            self.close_connection = True
            return
        if not self.server.request_started():
            self.close_connection = True
            return
        try:
            super().handle_one_request()
        finally:
            self.server.request_finished()
        if self.server.stopping:
            self.close_connection = True

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # -- dispatch ---------------------------------------------------------------------------------------

    def _serve(self) -> None:
        url = urlsplit(self.path)
        pairs = parse_qsl(url.query, keep_blank_values=True)
        self._body = RequestBody(self.rfile, self.headers)
        self._query_id, self._headers_sent = str(uuid.uuid4()), False
        self._timezone = self.server.engine.timezone
        try:
            if url.path in ("/ping", "/replicas_status") or (
                url.path == "/" and self.command == "GET" and not pairs
            ):
                self._plain(200, b"Ok.\n")
            elif url.path != "/":
                self._plain(
                    404, f"There is no handle {url.path}\n\nUse / or /ping for health checks.\n".encode()
                )
            else:
                req = QueryRequest.from_pairs(pairs, self.command, self.headers)
                self._query_id = req.query_id or self._query_id
                self._timezone = req.settings.get("session_timezone") or self._timezone
                self._execute(req)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client is gone; nobody to answer
        except Exception as exc:
            if not isinstance(exc, ClickHouseError):
                traceback.print_exc(file=sys.stderr)
            try:
                self._fail(ClickHouseError.from_engine(exc))
            except OSError:
                self.close_connection = True
        finally:
            if not self._body.finished and not self.close_connection:
                self._drain_or_close()

    def _execute(self, req: QueryRequest) -> None:
        chunks = decoded(iter(self._body), self.headers.get("Content-Encoding"))
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            req.add_form(ctype, b"".join(chunks))
            chunks = iter(())
        text, insert, data = _read_statement(req, chunks)
        server = self.server
        settings = {"readonly": "2", **req.settings} if req.readonly else req.settings
        with (
            server.sessions.use(req.session_id, req.session_timeout, req.session_check) as session,
            server.engine.connect() as conn,
        ):
            conn.prepare(req.database, settings, session.statements if session else ())
            if insert is not None:
                result = conn.insert(insert.statement, insert.format, data)
                self._reply(b"", None, _summary(written=result))
            else:
                self._query(conn, req, text)
                if session is not None and first_token(text) in (b"SET", b"USE"):
                    session.remember(text)

    def _query(self, conn, req: QueryRequest, text: bytes) -> None:
        if not text.strip():
            raise ClickHouseError.of(SYNTAX_ERROR, "Empty query")
        info = conn.classify(text.decode("utf-8", "replace"))
        if info["statement_count"] > 1:
            raise ClickHouseError.of(SYNTAX_ERROR, "Multi-statements are not allowed")
        formats = self.server.engine.output_formats
        fmt = output_format(text, formats) or formats.get(req.default_format.lower(), req.default_format)
        has_result = info["query_class"].name == "READ_ONLY"
        encoder = self._encoder(req)
        # chdb streams SELECTs only (not SHOW, DESCRIBE, ...); an HTTP/1.0 client cannot take chunks.
        if (
            has_result
            and fmt in STREAMABLE
            and not req.wait_end_of_query
            and self.request_version != "HTTP/1.0"
            and first_token(text) in (b"SELECT", b"WITH", b"(")
        ):
            self._reply_stream(conn.stream(text, fmt, req.params), fmt, encoder)
            return
        result = conn.run(text, fmt, req.params)
        body = result.get_memview().view()
        self._reply(body, fmt if has_result or len(body) else None, _summary(read=result), encoder)

    def _encoder(self, req: QueryRequest) -> Encoder | None:
        method = choose_encoding(self.headers.get("Accept-Encoding", "")) if req.compress_response else None
        return Encoder(method) if method else None

    # -- responses --------------------------------------------------------------------------------------

    def _start(self, status: int, fmt: str | None, summary: dict | None, extra: dict[str, str]) -> None:
        engine = self.server.engine
        self.send_response(status)
        self.send_header("Content-Type", content_type(fmt))
        self.send_header("X-ClickHouse-Server-Display-Name", engine.display_name)
        self.send_header("X-ClickHouse-Query-Id", self._query_id)
        if fmt is not None:
            self.send_header("X-ClickHouse-Format", fmt)
        self.send_header("X-ClickHouse-Timezone", self._timezone)
        if summary is not None:
            self.send_header("X-ClickHouse-Summary", orjson.dumps(summary).decode())
        for name, value in extra.items():
            self.send_header(name, value)
        if self.close_connection or self.server.stopping:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_sent = True

    def _reply(
        self,
        body,
        fmt: str | None,
        summary: dict | None,
        encoder: Encoder | None = None,
        status: int = 200,
        extra: dict[str, str] | None = None,
    ) -> None:
        extra = dict(extra or {})
        if encoder is not None and len(body):
            body = encoder.encode(body) + encoder.finish()
            extra["Content-Encoding"] = encoder.method
        extra["Content-Length"] = str(len(body))
        self._start(status, fmt, summary, extra)
        if len(body):
            self.wfile.write(body)

    def _reply_stream(self, results: Generator[Any, None, None], fmt: str, encoder: Encoder | None) -> None:
        """Send blocks as they come (chunked). An error after the first block can no longer change the
        status, so it is appended in ClickHouse's tagged form (`X-ClickHouse-Exception-Tag`), which
        clickhouse-connect detects and raises."""
        try:
            first = next(results, None)  # an error here still gets a proper error response
            tag = secrets.token_hex(8)
            extra = {"Transfer-Encoding": "chunked", "X-ClickHouse-Exception-Tag": tag}
            if encoder is not None:
                extra["Content-Encoding"] = encoder.method
            self._start(200, fmt, _summary(), extra)
            encode = encoder.encode if encoder is not None else (lambda data: data)
            try:
                for result in itertools.chain([first] if first is not None else [], results):
                    self._write_chunk(encode(result.get_memview().view()))
            except ClickHouseError as exc:
                message = f"Code: {exc.code}. {exc.message}".encode()
                self._write_chunk(
                    encode(
                        b"__exception__\r\n%s\r\n%s\n%d %s\r\n__exception__\r\n"
                        % (tag.encode(), message, len(message), tag.encode())
                    )
                )
            if encoder is not None:
                self._write_chunk(encoder.finish())
            self.wfile.write(b"0\r\n\r\n")
        finally:
            results.close()  # cancels the engine's stream if the client went away

    def _plain(self, status: int, text: bytes) -> None:
        self._body.drain()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def _write_chunk(self, data) -> None:
        if not len(data):  # an empty chunk would end the response
            return
        if len(data) < 65536:  # small pieces go out as one packet
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(b"%x\r\n" % len(data))
            self.wfile.write(data)
            self.wfile.write(b"\r\n")

    def _fail(self, exc: ClickHouseError) -> None:
        if self._headers_sent:
            self.close_connection = True  # mid-response: all we can do is cut it short
            return
        self._drain_or_close()
        body = exc.body(self.server.engine.version)
        self._reply(
            body, None, None, status=exc.http_status, extra={"X-ClickHouse-Exception-Code": str(exc.code)}
        )

    def _drain_or_close(self) -> None:
        # The client is still sending (an insert rejected before its data was read): take the rest so it
        # reads our answer instead of a reset connection. A broken body means the connection is done.
        try:
            self._body.drain()
        except (ClickHouseError, OSError):
            self.close_connection = True


def _read_statement(
    req: QueryRequest, chunks: Iterator[bytes]
) -> tuple[bytes, InlineInsert | None, Iterator[bytes]]:
    """Read the body only as far as needed to know what it is.

    ClickHouse reads the query as `query` parameter + newline + body. An INSERT with inline data returns
    (head, insert, the data chunks still to stream); anything else is read whole: (text, None, empty).
    """
    buf = (req.query.encode() + b"\n") if req.query else b""
    at_eof = False
    while True:
        try:
            insert = split_insert(buf, at_eof or len(buf) > MAX_HEAD)
            break
        except Incomplete:
            more = next(chunks, None)
            if more is None:
                at_eof = True
            else:
                buf = buf + more if buf else more  # usually one chunk holds the whole head: no copy
    if insert is None:
        return buf + b"".join(chunks), None, iter(())
    rest = buf[insert.data_start :]
    return buf[: insert.data_start], insert, itertools.chain([rest] if rest else [], chunks)


def _summary(read=None, written=None) -> dict[str, str]:
    """X-ClickHouse-Summary: ClickHouse sends every counter as a string."""
    summary = dict.fromkeys(
        (
            "read_rows",
            "read_bytes",
            "written_rows",
            "written_bytes",
            "total_rows_to_read",
            "result_rows",
            "result_bytes",
            "elapsed_ns",
        ),
        "0",
    )
    if read is not None:
        summary.update(
            read_rows=str(read.storage_rows_read()),
            read_bytes=str(read.storage_bytes_read()),
            written_rows=str(read.rows_written()),
            written_bytes=str(read.bytes_written()),
            result_rows=str(read.rows_read()),
            result_bytes=str(read.size()),
            elapsed_ns=str(int(read.elapsed() * 1e9)),
        )
    if written is not None:
        summary.update(
            written_rows=str(written.rows_written()),
            written_bytes=str(written.bytes_written()),
            elapsed_ns=str(int(written.elapsed() * 1e9)),
        )
    return summary
