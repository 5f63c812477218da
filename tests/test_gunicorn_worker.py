"""deploy/gunicorn_worker.py: pywsgi with gunicorn's keep-alive setting applied. Real gunicorn, Kafka, Redis."""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import orjson
import pytest

from .services import api_server

EVENT = orjson.dumps({"event": "paywall_viewed", "user_id": "usr_1", "timestamp": "2024-03-15T14:22:00Z"})


def _request(key: str) -> bytes:
    return (b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(EVENT) + EVENT)


def _response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _connect(server) -> socket.socket:
    url = urlsplit(server.url)
    return socket.create_connection((url.hostname, url.port), timeout=10)


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_seconds(production_env, workspace_key):
    key = workspace_key(rate_limit_per_minute=100_000)[1]
    with api_server({**production_env, "FLOKIT_API_KEEPALIVE_SECONDS": "1"}) as server:
        with _connect(server) as sock:
            for _ in range(2):  # kept alive between requests sent back to back
                sock.sendall(_request(key))
                assert _response(sock).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert sock.recv(1) == b""  # the server closed it
            assert 0.5 < time.monotonic() - started < 5


def test_keepalive_0_serves_one_request_per_connection(production_env, workspace_key):
    key = workspace_key(rate_limit_per_minute=100_000)[1]
    with api_server({**production_env, "FLOKIT_API_KEEPALIVE_SECONDS": "0"}) as server:
        for _ in range(2):
            with _connect(server) as sock:
                sock.sendall(_request(key))
                assert _response(sock).startswith(b"HTTP/1.1 200")
                assert sock.recv(1) == b""


def test_a_response_head_and_body_go_out_in_one_send():
    # pywsgi's own handler sends them apart (two syscalls per response). Served in-process by gevent's
    # WSGIServer with the worker's handler; the handler's socket records what it is asked to send.
    import gevent
    from gevent import socket as gsocket
    from gevent.pywsgi import WSGIServer

    from deploy.gunicorn_worker import _Handler

    sends: list[bytes] = []

    class RecordingSocket:
        def __init__(self, sock):
            self._real = sock  # (not `_sock`: pywsgi reads that name when it closes)

        def sendall(self, data):
            sends.append(bytes(data))
            return self._real.sendall(data)

        def __getattr__(self, name):
            return getattr(self._real, name)

    class Recording(_Handler):
        def __init__(self, sock, *args, **kwargs):
            super().__init__(sock, *args, **kwargs)
            self.socket = RecordingSocket(self.socket)

    def app(environ, start_response):
        body = b'{"ok":true}' if environ["PATH_INFO"] == "/body" else b""
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    server = WSGIServer(("127.0.0.1", 0), app, handler_class=Recording)
    server.idle_seconds = 5
    server.log = SimpleNamespace(access=lambda *args: None)  # gunicorn's access log
    server.start()
    try:
        for path, body in ((b"/body", b'{"ok":true}'), (b"/empty", b"")):
            sends.clear()
            with gsocket.create_connection(("127.0.0.1", server.server_port), timeout=5) as sock:
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            assert len(sends) == 1, sends
            assert sends[0] == received and received.startswith(b"HTTP/1.1 200") and received.endswith(b"\r\n\r\n" + body)
    finally:
        server.stop()
        gevent.get_hub().join(timeout=0)


# --- the header reader (RequestHeaders) and the access-log hook, served in-process by gevent's WSGIServer ---

def _serve(handler_class, app, access_log_enabled=False):
    from gevent.pywsgi import WSGIServer

    accessed = []
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=handler_class)
    server.idle_seconds = 5
    server.log = SimpleNamespace(access=lambda *args: accessed.append(args), access_log_enabled=access_log_enabled)
    server.start()
    return server, accessed


def _exchange(server, raw: bytes) -> bytes:
    from gevent import socket as gsocket

    with gsocket.create_connection(("127.0.0.1", server.server_port), timeout=5) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _environ_app(environ, start_response):
    body = orjson.dumps({k: v for k, v in environ.items() if isinstance(v, str) and k.isupper()}
                        | {"body": environ["wsgi.input"].read().decode()})
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


HEADERS = (b"POST /p/a%20b?q=1&r=2 HTTP/1.1\r\nHost: example.test:8080\r\n"
           b"Content-Type: application/json; charset=utf-8\r\nX-Multi: a\r\nx-multi:b  \r\n"
           b"X_Under: dropped\r\nCookie: a=1\r\nCookie: b=2\r\nIdempotency-Key:   spaced value \t\r\n"
           b"Authorization: Bearer fk_x.y\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")


def test_the_environ_is_pywsgis_own():
    # The reference is gevent's pywsgi with its own header parsing (the email package): every key and
    # value of the environ must come out the same through RequestHeaders.
    import gevent
    from gunicorn.workers.ggevent import PyWSGIHandler

    from deploy.gunicorn_worker import _Handler

    environs = []
    for handler in (PyWSGIHandler, _Handler):
        server, _ = _serve(handler, _environ_app)
        try:
            head, _, body = _exchange(server, HEADERS).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            environ = orjson.loads(body)
            environs.append({k: v for k, v in environ.items() if k not in ("REMOTE_PORT", "SERVER_PORT")})
        finally:
            server.stop()
    gevent.get_hub().join(timeout=0)
    reference, ours = environs
    assert ours == reference
    assert ours["HTTP_X_MULTI"] == "a,b" and ours["HTTP_COOKIE"] == "a=1; b=2"
    assert ours["HTTP_IDEMPOTENCY_KEY"] == "spaced value" and "HTTP_X_UNDER" not in ours
    assert ours["CONTENT_TYPE"] == "application/json; charset=utf-8" and ours["CONTENT_LENGTH"] == "2"
    assert ours["PATH_INFO"] == "/p/a b" and ours["QUERY_STRING"] == "q=1&r=2" and ours["body"] == "{}"


def test_a_chunked_body_ignores_content_length():
    from deploy.gunicorn_worker import _Handler

    server, _ = _serve(_Handler, _environ_app)
    try:
        raw = (b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n"
               b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        head, _, body = _exchange(server, raw).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        environ = orjson.loads(body)
        assert environ["body"] == "abcde" and "CONTENT_LENGTH" not in environ
    finally:
        server.stop()


@pytest.mark.parametrize("headers, why", [
    (b"Host: x\r\nNoColonHere\r\n", "a line without a colon"),
    (b"Host: x\r\nX-A: 1\r\n  folded\r\n", "a folded line"),
    (b"Host: x\r\nBad Name: 1\r\n", "a name with a space"),
    (b"Host : x\r\n", "white space before the colon"),
    (b"".join(b"X-%d: v\r\n" % i for i in range(101)), "101 headers"),
    (b"X-Long: " + b"v" * 70_000 + b"\r\n", "a line over 64 KiB"),
])
def test_malformed_headers_are_a_400_that_says_what_is_wrong(headers, why):
    from deploy.gunicorn_worker import _Handler

    called = []
    server, _ = _serve(_Handler, lambda environ, start_response: called.append(environ))
    try:
        answer = _exchange(server, b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    finally:
        server.stop()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), why
    assert b"Connection: close" in head and b"Content-Type: application/json" in head
    error = orjson.loads(body)
    assert error["error"] == "invalid_http" and error["message"].startswith("the request is not valid HTTP/1.1"), why
    assert not called  # the app never saw it


def test_the_access_log_hook_runs_only_when_the_access_log_is_on():
    from deploy.gunicorn_worker import _Handler

    for enabled in (False, True):
        server, accessed = _serve(_Handler, _environ_app, access_log_enabled=enabled)
        try:
            assert _exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
        finally:
            server.stop()
        assert len(accessed) == (1 if enabled else 0)
        if enabled:  # gunicorn's hook gets the request's headers from RequestHeaders.items()
            _resp, req_headers, _environ, _time = accessed[0]
            assert ("Host", "x") in req_headers


# --- connections spread over the workers (deploy/worker_balance.py) ---

def test_connections_opened_at_once_are_spread_over_the_workers(production_env, workspace_key):
    # 24 keep-alive connections opened back to back, before any request, as a client's pool (or wrk) does.
    # Without the balance one worker often took all of them (8 of 8 in two of three scratch runs).
    import re
    import subprocess
    from collections import Counter

    key = workspace_key(rate_limit_per_minute=100_000)[1]
    with api_server(production_env, workers=2) as server:
        deadline = time.monotonic() + 30
        while len(_children(server.proc.pid)) < 2:  # both workers booted, not just the first
            assert time.monotonic() < deadline, "gunicorn did not start two workers"
            time.sleep(0.1)
        time.sleep(1.5)  # each has published its (empty) share once
        socks = _connect_at_once(server, 24)
        try:
            for sock in socks:
                sock.sendall(_request(key))
            for sock in socks:
                assert _response(sock).startswith(b"HTTP/1.1 200")
            ss = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{server.port} )"],
                                capture_output=True, text=True, check=True).stdout
            held = Counter(re.findall(r"pid=(\d+)", ss))
        finally:
            for sock in socks:
                sock.close()
    assert sum(held.values()) == 24 and len(held) == 2, held
    assert min(held.values()) >= 10, held  # 12/12 give or take the slack and a timing or two


def _connect_at_once(server, n: int) -> list[socket.socket]:
    """n connections whose handshakes all complete before a worker gets to accept the first."""
    import select

    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", server.port))
        socks.append(sock)
    for sock in socks:
        select.select([], [sock], [], 10)
        sock.setblocking(True)
        sock.settimeout(10)
    return socks


def _children(pid: int) -> list[int]:
    from pathlib import Path

    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_worker_over_its_share_waits_a_bounded_time():
    import mmap

    from deploy import worker_balance
    from deploy.worker_balance import ConnectionBalance

    table = mmap.mmap(-1, worker_balance.TABLE_BYTES)
    a = ConnectionBalance(1, table, pid=101)
    b = ConnectionBalance(2, table, pid=102)
    assert not a.should_wait(5)  # alone in the table: nobody to leave it to
    b.publish(3)
    assert not a.should_wait(4)  # within the slack of the least loaded
    assert a.should_wait(5) and not b.should_wait(3)  # over it: leave the connection to b, which takes it
    time.sleep(worker_balance.MAX_WAIT_SECONDS + 0.01)
    assert not a.should_wait(5)  # waited long enough: b may be busy or stuck, accept anyway
    assert a.should_wait(5)  # and the wait starts again
    b.leave()
    assert not a.should_wait(50)  # a stopping worker is out of the comparison
    # a worker that died without leaving (slot 3: pid 103, no connections, written STALE_SECONDS ago)
    worker_balance._SLOT.pack_into(table, 3 * worker_balance._SLOT.size, 103, 0,
                                   time.monotonic() - worker_balance.STALE_SECONDS - 1)
    assert not a.should_wait(50)  # is out of the comparison too


def test_what_a_worker_built_at_start_is_frozen_out_of_the_collectors_sight():
    import gc

    from deploy.gunicorn_worker import Worker

    built = []
    worker = Worker.__new__(Worker)  # just what load_wsgi uses: the app to load
    worker.app = SimpleNamespace(wsgi=lambda: built.append(object()) or (lambda environ, start_response: []))
    worker.cfg = SimpleNamespace(reload=False)
    before = gc.get_freeze_count()
    try:
        worker.load_wsgi()
        assert built and gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
