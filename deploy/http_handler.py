"""HTTP/1.1 connections of the front door's gevent workers, parsed by httptools.

gevent's pywsgi server keeps accepting connections, building the base environ and
running the WSGI app; what it hands each connection to is this handler instead of
its own. pywsgi reads a request line by line in Python (and its headers through
the email package); httptools is llhttp, Node.js's parser, in C (the one uvicorn
uses), for less worker CPU per request (bench/README.md). It is used with
FLOKIT_HTTP_PARSER=httptools (deploy/gunicorn_worker.py); pywsgi's own
handler otherwise.

What the handler promises, each one tested (tests/test_http_handler.py):
- keep-alive as HTTP/1.0 and 1.1 define it (llhttp decides), pipelined requests
  answered in order, an idle connection closed after `server.idle_seconds`
  (gunicorn's keepalive; 0: one request per connection);
- deadlines, so that a client sending slowly cannot hold a connection: a
  request's head must arrive whole within `server.head_timeout` of its first
  bytes (also the wait for them when there is no idle timeout), its body within
  `server.body_timeout` of the head's end plus a second per
  `server.body_min_bytes_per_second` received (a slow upload that keeps going
  is not cut); past one, a 408 in the API's error shape, and the connection is
  closed;
- at the worker's connection limit (`server.connection_limit`; the worker's pool
  holds one connection more), the connection that has waited longest for its
  client (an idle one, or a request on its way) gives way to the new one
  (`WaitingConnections`): a 408 if a request had begun, then it is closed;
- request bodies by Content-Length or chunked, `Expect: 100-continue` answered;
  the body is read whole before the app runs, up to `server.max_body_bytes` + 1
  bytes (the app refuses larger ones with a 413; the rest is read and dropped);
  a client that stops sending mid-body still gets the app's answer (its reads
  past what came raise OSError, as a socket's would);
- the environ of pywsgi's own handler (header names with `_` left out, repeated
  headers joined; `wsgi.input` a BytesIO of the body);
- a request it cannot parse is a 400 in the API's error shape (over 100 headers
  or a 64 KiB head: a 431), and the connection is closed; the requests parsed
  whole before it are run and answered first, in order; what follows a request
  that closes the connection is ignored;
- a response goes out in one send (status line, headers, body), with
  Content-Length (the app's, or the length of what it returned) and Date; an
  app that raises gets a 500 in the API's error shape;
- gunicorn's access log, when it is on.
"""

from __future__ import annotations

import socket
import time
from collections import OrderedDict, deque
from datetime import timedelta
from email.utils import formatdate
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools
import orjson
from gunicorn.workers.ggevent import GeventResponse

MAX_HEADERS = 100
MAX_HEAD_BYTES = 65536


class _RequestTooLarge(Exception):
    """A head over the limits (raised in a parser callback; httptools then raises HttpParserCallbackError)."""


class _CutShort(BytesIO):
    """The body of a request whose client stopped sending before its end: reading past what came is an
    OSError, as reading the socket would have been (ingest_api.body answers it with a 400)."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is None or size < 0 or len(data) < size:
            raise OSError("the client closed the connection before the end of the body")
        return data


class _Request:
    __slots__ = (
        "url",
        "headers",
        "head_bytes",
        "body",
        "body_bytes",
        "method",
        "version",
        "keep_alive",
        "head_since",
        "body_since",
    )

    def __init__(self) -> None:
        self.method: bytes | None = None  # set once the head is complete, with the two below
        self.version = "1.1"
        self.keep_alive = False
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        # When the handler first waited for more of the head, or of the body (0: it has not: a request that
        # comes whole in one read costs no clock).
        self.head_since = self.body_since = 0.0


class WaitingConnections(OrderedDict["HttptoolsHandler", None]):
    """A server's connections waiting for their clients (for a request, or the rest of one), longest first.

    A worker at its connection limit would stop accepting until one of its connections ends, and clients that
    send slowly or not at all would keep every new one out, however short the deadlines (they come back). So
    the worker's pool holds one connection more than the limit (deploy/gunicorn_worker.py), and the handler of
    the connection that takes it makes room: the connection that has waited longest gives way, and gevent
    accepts the next one once it has gone. Connections whose request is being run are not here: with only
    those, the connection over the limit stays until one ends, and gevent stops accepting meanwhile, which is
    the limit doing its job.
    """

    def give_way(self) -> bool:
        """Close the connection that has waited longest, to make room for a new one; whether there was one."""
        if not self:
            return False
        handler, _ = self.popitem(last=False)
        handler.give_way()
        return True


def _error(
    status: bytes, code: str, message: str
) -> bytes:  # a response after which the connection is closed
    body = orjson.dumps({"error": code, "message": message})
    return (
        b"HTTP/1.1 " + status + b"\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


_INTERNAL_ERROR = (
    b"500 Internal Server Error",
    "internal_error",
    "an unexpected error occurred; it has been logged",
)
_TIMEOUT = (b"408 Request Timeout", "request_timeout")
_GAVE_WAY = _error(
    *_TIMEOUT,
    "the server is at its connection limit and this request was the one waiting longest for"
    " its bytes; send it again",
)
_date_second = 0
_date = b""


def _http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    global _date_second, _date
    now = int(time.time())
    if now != _date_second:
        _date_second, _date = now, formatdate(now, usegmt=True).encode()
    return _date


class HttptoolsHandler:
    """One connection: pywsgi's handler interface (`handler_class(sock, address, server).handle()`)."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], server: Any) -> None:
        self.socket = sock
        self.client_address = address
        self.server = server
        self._parser = httptools.HttpRequestParser(self)
        self._current: _Request | None = None
        self._complete: deque[_Request] = deque()
        self._max_body = server.max_body_bytes + 1  # the front door's limit (Worker.init_process sets it)
        self._given_way = False

    # --- httptools callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._current = _Request()

    def on_url(self, url: bytes) -> None:
        request = self._current
        assert request is not None  # the parser calls it between on_message_begin and on_message_complete
        request.url += url
        request.head_bytes += len(url)
        if request.head_bytes > MAX_HEAD_BYTES:
            raise _RequestTooLarge("the request line and headers are over 64 KiB")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._current
        assert request is not None
        request.headers.append((name, value))
        request.head_bytes += len(name) + len(value) + 4
        if len(request.headers) > MAX_HEADERS:
            raise _RequestTooLarge(f"more than {MAX_HEADERS} headers")
        if request.head_bytes > MAX_HEAD_BYTES:
            raise _RequestTooLarge("the request line and headers are over 64 KiB")

    def on_headers_complete(self) -> None:
        request, parser = self._current, self._parser
        assert request is not None
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        if request.version == "1.1" and any(
            name.lower() == b"expect" and value.lower() == b"100-continue" for name, value in request.headers
        ):
            self.socket.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the client waits for it before the body

    def on_body(self, body: bytes) -> None:
        request = self._current
        assert request is not None
        room = self._max_body - request.body_bytes
        if room > 0:
            request.body.append(body if len(body) <= room else body[:room])
        request.body_bytes += len(body)

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._complete.append(self._current)
        self._current = None

    # --- the connection ------------------------------------------------------------------------------------

    def handle(self) -> None:
        sock = self.socket
        server = self.server
        idle = server.idle_seconds
        # The wait for a request's first bytes: the idle timeout, or with none (one request per connection)
        # the head's deadline. Within a request its deadlines bound the wait instead.
        between_requests = idle if idle > 0 else server.head_timeout
        timeout = between_requests
        sock.settimeout(timeout)
        waiting = server.waiting
        pool = server.pool
        if pool is not None and len(pool) > server.connection_limit:  # this connection is the one over it
            waiting.give_way()
        waiting[self] = None
        try:
            while True:
                wait = between_requests
                request = self._current
                if request is not None:  # one has begun: its deadline bounds the wait
                    wait = self._time_left(request)
                    if wait <= 0:
                        sock.sendall(self._timed_out(request))
                        return
                if wait != timeout:
                    sock.settimeout(wait)
                    timeout = wait
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if self._current is not None:
                        sock.sendall(self._timed_out(self._current))
                    return
                except OSError:  # a reset, or the connection gave way (its wait is cancelled with an OSError)
                    if self._given_way and self._current is not None:
                        sock.sendall(_GAVE_WAY)
                    return
                if not data:
                    if self._given_way:
                        if self._current is not None:
                            sock.sendall(_GAVE_WAY)
                    elif self._current is not None and self._current.method is not None:  # a body cut short
                        waiting.pop(self, None)
                        self._respond(self._current, cut_short=True)
                    return
                refusal = None
                try:
                    self._parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    if self._complete:
                        # llhttp completes the upgrade request, then stops: it is not run
                        self._complete.pop()
                    refusal = _error(
                        b"400 Bad Request", "invalid_http", "protocol upgrades are not supported"
                    )
                except httptools.HttpParserError as exc:
                    cause = exc.__context__ if isinstance(exc.__context__, _RequestTooLarge) else exc
                    status = (
                        b"431 Request Header Fields Too Large" if cause is not exc else b"400 Bad Request"
                    )
                    refusal = _error(
                        status, "invalid_http", f"the request is not valid HTTP/1.1: {cause}"[:300]
                    )
                # The requests that came whole before bytes that could not be parsed are answered first, in
                # order: a client reads the first answer as its first request's. One that closes the
                # connection (llhttp refuses what follows it) ends it there, without the refusal.
                if self._complete:
                    # Not waiting while its requests run: it waits for nothing from its client.
                    waiting.pop(self, None)
                    if (
                        timeout != between_requests
                    ):  # the answers' sends: the usual bound, not a deadline's rest
                        sock.settimeout(between_requests)
                        timeout = between_requests
                    while self._complete:
                        if not self._respond(self._complete.popleft()) or idle <= 0:
                            return
                    waiting[self] = None  # at the end: the wait for its next request begins now
                if refusal is not None:
                    sock.sendall(refusal)
                    return
        except OSError:  # the client went away while we answered
            return
        finally:
            waiting.pop(self, None)
            try:
                sock.close()
            except OSError:
                pass

    def give_way(self) -> None:
        """Make room for a new connection (WaitingConnections): called from the new connection's handler, it
        does not wait. Ending the reads wakes this handler's recv with an OSError (gevent cancels the wait)
        or an end of stream; it then answers a request that had begun with a 408 and closes the connection."""
        self._given_way = True
        try:
            self.socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _time_left(self, request: _Request) -> float:
        """Seconds before the deadline of the part of `request` still to come."""
        server = self.server
        now = time.monotonic()
        if request.method is None:
            if not request.head_since:
                request.head_since = now
            head_left: float = request.head_since + server.head_timeout - now
            return head_left
        if not request.body_since:
            request.body_since = now
        body_left: float = (
            request.body_since
            + server.body_timeout
            + request.body_bytes / server.body_min_bytes_per_second
            - now
        )
        return body_left

    def _timed_out(self, request: _Request) -> bytes:
        server = self.server
        if request.method is None:
            message = f"the request's line and headers did not all arrive within {server.head_timeout:g} s"
        else:
            message = (
                f"the request's body came too slowly: it has {server.body_timeout:g} s, and one more for each"
                f" {server.body_min_bytes_per_second:g} bytes received"
            )
        return _error(*_TIMEOUT, message)

    def _environ(self, request: _Request, cut_short: bool = False) -> dict[str, Any]:
        assert request.method is not None  # its head is complete
        environ: dict[str, Any] = self.server.get_environ()
        environ["REQUEST_METHOD"] = request.method.decode("latin-1")
        path, _, query = request.url.partition(b"?")
        environ["PATH_INFO"] = unquote_to_bytes(path).decode("latin-1")
        environ["QUERY_STRING"] = query.decode("latin-1")
        environ["RAW_URI"] = request.url.decode("latin-1")
        environ["SERVER_PROTOCOL"] = "HTTP/" + request.version
        environ["REMOTE_ADDR"] = str(self.client_address[0])
        environ["REMOTE_PORT"] = str(self.client_address[1])
        chunked = False
        for name, raw_value in request.headers:
            if b"_" in name:  # as pywsgi: HTTP_X_A would not tell X-A from X_A
                continue
            key = name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1").strip()
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                environ.setdefault(key, value)
                continue
            if key == "TRANSFER_ENCODING" and value.lower() == "chunked":
                chunked = True
            key = "HTTP_" + key
            if key in environ:
                environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                environ[key] = value
        if chunked:  # llhttp read the body by its chunks; a Content-Length beside them says nothing
            environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input"] = (_CutShort if cut_short else BytesIO)(b"".join(request.body))
        environ["wsgi.input_terminated"] = True
        environ["gunicorn.sock"] = self.socket
        return environ

    def _respond(self, request: _Request, cut_short: bool = False) -> bool:
        """Run the app for `request` and send its answer; whether the connection stays open."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            # Nothing is sent before the app returns, so a second call (with exc_info) simply replaces the
            # first.
            started[:] = [status, headers]

        log = self.server.log
        started_at = time.monotonic() if log.access_log_enabled else 0.0
        environ = self._environ(request, cut_short)
        try:
            result = self.server.application(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            status, headers = started  # a ValueError if the app never called start_response: a 500
            head, keep_alive = self._head(request, status, headers, len(body))
        except Exception:
            log.exception("Error handling request %s", request.url[:200])
            self.socket.sendall(_error(*_INTERNAL_ERROR))
            return False
        self.socket.sendall(head + body if request.method != b"HEAD" else head)
        if started_at:
            log.access(
                GeventResponse(started[0], started[1], len(body)),
                [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers],
                environ,
                timedelta(seconds=time.monotonic() - started_at),
            )
        return keep_alive

    def _head(
        self, request: _Request, status: str, headers: list[tuple[str, str]], body_length: int
    ) -> tuple[bytes, bool]:
        """The response's status line and headers, and whether the connection stays open after it."""
        head = bytearray(b"HTTP/1.1 ")
        head += status.encode("latin-1")
        head += b"\r\n"
        has_length = close = False
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"a line break in the response header {name!r}")
            lower = name.lower()
            if lower == "content-length":
                has_length = True
            elif lower == "connection":
                close = value.lower() == "close"
                continue  # the handler's own Connection header follows
            head += f"{name}: {value}\r\n".encode("latin-1")
        if not has_length and status[:3] not in ("204", "304"):
            head += b"Content-Length: %d\r\n" % body_length
        head += b"Date: " + _http_date() + b"\r\n"
        # A stopping worker (gunicorn's SIGTERM closes its server) closes each connection after its answer, so
        # keep-alive clients go to the other workers instead of holding this one until gunicorn's graceful
        # timeout kills it with their requests in flight.
        keep_alive = request.keep_alive and not close and not self.server.closed
        if not keep_alive:
            head += b"Connection: close\r\n"
        elif request.version == "1.0":
            head += b"Connection: keep-alive\r\n"
        head += b"\r\n"
        return bytes(head), keep_alive
