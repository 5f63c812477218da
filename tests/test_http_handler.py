"""deploy/http_handler.py: the front door's HTTP/1.1 connections, served in this process by gevent's WSGI
server with the handler the gunicorn workers use; the client is a gevent socket, so the server runs while it
waits."""

from __future__ import annotations

import time

import gevent
import orjson
import pytest
from gevent import socket as gsocket
from gevent.pywsgi import WSGIServer

from deploy.http_handler import HttptoolsHandler, WaitingConnections


class _Log:
    def __init__(self, access_log_enabled=False):
        self.access_log_enabled = access_log_enabled
        self.accessed = []
        self.errors = []

    def access(self, resp, req_headers, environ, request_time):
        self.accessed.append((resp.status, resp.sent, req_headers))

    def exception(self, msg, *args):
        self.errors.append(msg % args)


@pytest.fixture
def serve():
    servers = []

    def start(
        app,
        *,
        handler=HttptoolsHandler,
        idle=5.0,
        max_body=8 * 1024 * 1024,
        access=False,
        head_timeout=20.0,
        body_timeout=20.0,
        body_rate=500,
    ):
        server = WSGIServer(("127.0.0.1", 0), app, handler_class=handler)
        server.idle_seconds = idle
        server.max_body_bytes = max_body
        server.head_timeout = head_timeout
        server.body_timeout = body_timeout
        server.body_min_bytes_per_second = body_rate
        server.waiting = WaitingConnections()
        server.log = _Log(access)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    gevent.get_hub().join(timeout=0)


def _connect(server):
    return gsocket.create_connection(("127.0.0.1", server.server_port), timeout=5)


def _read_response(sock, buffered=b"") -> tuple[bytes, bytes, bytes]:
    """(head, body, what followed) of one response with Content-Length."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return head, rest[:length], rest[length:]


def _exchange(server, raw: bytes) -> bytes:
    """Send `raw`, read until the server closes."""
    with _connect(server) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _environ_app(environ, start_response):
    body = orjson.dumps(
        {k: v for k, v in environ.items() if isinstance(v, str) and k.isupper()}
        | {"body": environ["wsgi.input"].read().decode()}
    )
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _echo_app(environ, start_response):
    body = environ["PATH_INFO"].encode() + b" " + environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])  # no Content-Length: the handler adds it
    return [body]


HEADERS = (
    b"POST /p/a%20b?q=1&r=2 HTTP/1.1\r\nHost: example.test:8080\r\n"
    b"Content-Type: application/json; charset=utf-8\r\nX-Multi: a\r\nx-multi:b  \r\n"
    b"X_Under: dropped\r\nCookie: a=1\r\nCookie: b=2\r\nIdempotency-Key:   spaced value \t\r\n"
    b"Authorization: Bearer fk_x.y\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
)


def test_the_environ_is_the_one_pywsgis_own_handler_builds(serve):
    # The reference: gevent's pywsgi with gunicorn's handler, which the workers used before this one.
    from gunicorn.workers.ggevent import PyWSGIHandler

    environs = []
    for handler in (PyWSGIHandler, HttptoolsHandler):
        server = serve(_environ_app, handler=handler)
        head, _, body = _exchange(server, HEADERS).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        environs.append(
            {k: v for k, v in orjson.loads(body).items() if k not in ("REMOTE_PORT", "SERVER_PORT")}
        )
    reference, ours = environs
    assert ours == reference
    assert ours["HTTP_X_MULTI"] == "a,b" and ours["HTTP_COOKIE"] == "a=1; b=2"
    assert ours["HTTP_IDEMPOTENCY_KEY"] == "spaced value" and "HTTP_X_UNDER" not in ours
    assert ours["CONTENT_TYPE"] == "application/json; charset=utf-8" and ours["CONTENT_LENGTH"] == "2"
    assert ours["PATH_INFO"] == "/p/a b" and ours["QUERY_STRING"] == "q=1&r=2" and ours["body"] == "{}"
    assert ours["RAW_URI"] == "/p/a%20b?q=1&r=2" and ours["SERVER_PROTOCOL"] == "HTTP/1.1"


def test_keep_alive_and_pipelined_requests_are_answered_in_order(serve):
    server = serve(_echo_app)
    with _connect(server) as sock:
        sock.sendall(
            b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nde"
        )
        head, body, rest = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"/one abc"
        assert b"Content-Length: 8" in head and b"\r\nDate: " in head and b"Connection" not in head
        head, body, rest = _read_response(sock, rest)
        assert body == b"/two de" and rest == b""
        sock.sendall(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, later
        assert _read_response(sock)[1] == b"/three "


def test_a_chunked_body_is_read_whole_and_content_length_beside_it_ignored(serve):
    server = serve(_environ_app)
    raw = (
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    head, _, body = _exchange(server, raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    environ = orjson.loads(body)
    assert environ["body"] == "abcde" and "CONTENT_LENGTH" not in environ


def test_expect_100_continue_is_answered_before_the_body_is_sent(serve):
    # curl sends Expect: 100-continue for bodies over 1 KiB and waits (up to 1 s) for the 100 first.
    server = serve(_echo_app)
    with _connect(server) as sock:
        sock.sendall(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):
            interim += sock.recv(1)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        head, body, _ = _read_response(sock)
        assert head.startswith(b"HTTP/1.1 200") and body == b"/big hello"


def test_head_gets_the_headers_without_the_body(serve):
    server = serve(_echo_app)
    with _connect(server) as sock:
        sock.sendall(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"/g "):
            received += sock.recv(65536)
    first, second = received.split(b"HTTP/1.1 200")[1:]
    assert b"Content-Length: 3" in first and first.endswith(b"\r\n\r\n")  # "/h " not sent
    assert second.endswith(b"\r\n\r\n/g ")


def test_http_1_0_closes_after_the_answer_unless_kept_alive(serve):
    server = serve(_echo_app)
    answer = _exchange(server, b"GET /old HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer and answer.endswith(b"/old ")
    with _connect(server) as sock:
        sock.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head, body, _ = _read_response(sock)
        assert b"Connection: keep-alive" in head and body == b"/a "
        sock.sendall(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert _read_response(sock)[1] == b"/b "


def test_an_idle_connection_is_closed_after_idle_seconds(serve):
    server = serve(_echo_app, idle=0.5)
    with _connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        _read_response(sock)
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.3 < time.monotonic() - started < 3


@pytest.mark.parametrize(
    "raw, status, why",
    [
        (b"GARBAGE\r\n\r\n", b"400", "not a request line"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n", b"400", "a line without a colon"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", b"400", "a name with a space"),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", b"400", "white space before the colon"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n",
            b"400",
            "Content-Length beside chunked (request smuggling)",
        ),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n",
            b"431",
            "101 headers",
        ),
        (b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 70_000 + b"\r\n\r\n", b"431", "a head over 64 KiB"),
    ],
)
def test_a_request_that_cannot_be_parsed_is_an_error_that_says_what_is_wrong(serve, raw, status, why):
    called = []
    server = serve(lambda environ, start_response: called.append(environ))
    head, _, body = _exchange(server, raw).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), (why, head)
    assert b"Connection: close" in head and b"Content-Type: application/json" in head
    error = orjson.loads(body)
    assert error["error"] == "invalid_http" and error["message"].startswith(
        "the request is not valid HTTP/1.1"
    ), why
    assert not called  # the app never saw it


def test_an_app_that_raises_gets_a_500_in_the_apis_shape(serve):
    def broken(environ, start_response):
        raise RuntimeError("a bug")

    server = serve(broken)
    head, _, body = _exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500") and b"Connection: close" in head
    assert orjson.loads(body)["error"] == "internal_error"
    assert server.log.errors


def test_a_body_over_the_limit_is_not_buffered_and_the_connection_stays_usable(serve):
    # The app sees the declared length and at most max_body_bytes + 1 bytes (enough to refuse it with a 413,
    # as ingest_api.body does); the rest is read and dropped.
    def app(environ, start_response):
        body = orjson.dumps(
            {"declared": environ.get("CONTENT_LENGTH"), "got": len(environ["wsgi.input"].read())}
        )
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    server = serve(app, max_body=10)
    with _connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000)
        _, body, rest = _read_response(sock)
        seen = orjson.loads(body)
        assert seen["declared"] == "100000" and seen["got"] == 11
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nsmall")
        assert orjson.loads(_read_response(sock, rest)[1]) == {"declared": "5", "got": 5}


def test_a_response_goes_out_in_one_send(serve):
    sends = []

    class Recording(HttptoolsHandler):
        def __init__(self, sock, address, server):
            super().__init__(sock, address, server)
            real = self.socket

            class Sock:
                def sendall(self, data):
                    sends.append(bytes(data))
                    return real.sendall(data)

                def __getattr__(self, name):
                    return getattr(real, name)

            self.socket = Sock()

    server = serve(_echo_app, handler=Recording)
    received = _exchange(
        server, b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    assert len(sends) == 1 and sends[0] == received and received.endswith(b"\r\n\r\n/body ok")


def test_the_access_log_gets_each_request_when_it_is_on(serve):
    for enabled in (False, True):
        server = serve(_echo_app, access=enabled)
        assert _exchange(server, b"GET /l HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200"
        )
        if enabled:
            ((status, sent, req_headers),) = server.log.accessed
            assert status == "200 OK" and sent == 3 and ("Host", "x") in req_headers
        else:
            assert server.log.accessed == []


def test_a_body_cut_short_by_the_client_still_gets_the_apps_answer(serve):
    # The client sends part of its body and half-closes: the app reads what came, then an OSError
    # (ingest_api's body reader turns it into a 400 in the API's shape).
    def app(environ, start_response):
        stream = environ["wsgi.input"]
        try:
            stream.read(1000)
            outcome = "read it all"
        except OSError as exc:
            outcome = f"OSError: {exc}"
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [outcome.encode()]

    server = serve(app)
    with _connect(server) as sock:
        sock.sendall(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"event": "payw')
        sock.shutdown(gsocket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400") and b"OSError: the client closed" in received


@pytest.mark.parametrize(
    "raw, answered, refusal",
    [
        (b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nBAD\x01 / HTTP/1.1\r\n\r\n", [b"/one "], b"400"),
        (
            b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n"
            b"aGET /two HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff",
            [b"/one a", b"/two "],
            b"400",
        ),
        (
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /two HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            [b"/one "],
            b"400",
        ),  # the upgrade request itself is refused, not run
        (
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\n"
            + b"X-Long: "
            + b"v" * 70_000
            + b"\r\n\r\n",
            [b"/one "],
            b"431",
        ),
        (
            b"GET /one HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n",
            [b"/one "],
            None,
        ),  # what follows a request that closes the connection is ignored, not refused
        (b"GET /one HTTP/1.0\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n", [b"/one "], None),
    ],
    ids=["garbage", "two-then-garbage", "upgrade", "head-too-large", "connection-close", "http-1.0"],
)
def test_requests_parsed_before_bytes_that_cannot_be_are_answered_first(serve, raw, answered, refusal):
    # A client reads the first answer as its first request's: a 400 there would be final, the request lost.
    called = []

    def app(environ, start_response):
        called.append(environ["PATH_INFO"])
        return _echo_app(environ, start_response)

    server = serve(app)
    received = _exchange(server, raw)
    bodies = []
    while received.startswith(b"HTTP/1.1 200"):
        _, body, received = _read_response(_Drained(), received)
        bodies.append(body)
    assert bodies == answered and len(called) == len(answered)
    if refusal is None:
        assert received == b""
    else:
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + refusal) and b"Connection: close" in head
        assert orjson.loads(body)["error"] == "invalid_http"


class _Drained:
    """A socket with nothing more to read (for _read_response on bytes already received)."""

    def recv(self, size):
        return b""


# --- deadlines: a client cannot hold a connection by sending slowly ---


def _trickle(sock, data: bytes, every: float):
    """Send `data` a byte at a time, `every` seconds apart, in the background (until the server closes)."""

    def run():
        try:
            for i in range(len(data)):
                sock.sendall(data[i : i + 1])
                gevent.sleep(every)
        except OSError:
            pass

    return gevent.spawn(run)


def _read_until_closed(sock) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:  # the server closed with bytes sent after its answer unread: a reset follows
        pass
    return received


def _assert_timed_out(received: bytes, *words: str):
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head, received
    assert b"Content-Type: application/json" in head
    error = orjson.loads(body)
    assert error["error"] == "request_timeout"
    for word in words:
        assert word in error["message"], error["message"]


def test_a_head_that_does_not_arrive_within_the_head_deadline_is_a_408(serve):
    # One byte every 0.1 s: each read is far within the idle timeout, the whole head is not.
    called = []
    server = serve(lambda environ, start_response: called.append(environ), head_timeout=0.5)
    with _connect(server) as sock:
        started = time.monotonic()
        sender = _trickle(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100, every=0.1)
        received = _read_until_closed(sock)
        elapsed = time.monotonic() - started
        sender.kill()
    _assert_timed_out(received, "head")
    assert 0.4 < elapsed < 4 and not called


def test_a_body_that_does_not_keep_pace_is_a_408(serve):
    called = []
    server = serve(lambda environ, start_response: called.append(environ), body_timeout=0.5, body_rate=1000)
    with _connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        started = time.monotonic()
        sender = _trickle(sock, b"x" * 1000, every=0.1)
        received = _read_until_closed(sock)
        elapsed = time.monotonic() - started
        sender.kill()
    _assert_timed_out(received, "body")
    assert 0.4 < elapsed < 4 and not called


def test_a_slow_body_that_keeps_pace_is_read_whole(serve):
    # 600 bytes every 0.3 s (2,000 bytes a second) for 1.8 s: past the body's first 0.5 s, but each
    # 1,000 bytes received give it another second.
    server = serve(_echo_app, body_timeout=0.5, body_rate=1000)
    with _connect(server) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3600\r\n\r\n")
        for _ in range(6):
            gevent.sleep(0.3)
            sock.sendall(b"y" * 600)
        head, body, _ = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 200") and body == b"/slow " + b"y" * 3600


def test_a_connection_that_sends_nothing_is_closed_even_without_keep_alive(serve):
    # keepalive 0 (one request per connection) leaves no idle timeout: the head's deadline bounds the wait.
    server = serve(_echo_app, idle=0, head_timeout=0.5)
    with _connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < 4
