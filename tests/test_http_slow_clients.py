"""Slow clients cannot keep new ones out (slowloris): at its connection limit a worker closes the connection
that has waited longest for its client (deploy/http_handler.py) rather than stop accepting.
In-process with a three-connection server, then a real gunicorn at its default limits with 2,000 slow
clients."""

from __future__ import annotations

import errno
import re
import socket
import statistics
import subprocess
import threading
import time

import gevent
import gevent.event
import orjson
import pytest
from gevent import socket as gsocket
from gevent.pool import Pool

from deploy.gunicorn_worker import _Server
from deploy.http_handler import HttptoolsHandler

from .services import HTTPTOOLS, api_server
from .test_http_handler import _Log, _read_response

SLOW_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000 + b"\r\n\r\n"


def test_at_the_connection_limit_the_connection_waiting_longest_gives_way():
    release = gevent.event.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/running":
            release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    # A limit of three connections: the pool holds one more, as the worker's does (deploy/gunicorn_worker.py).
    server_class = type(
        "Server",
        (_Server,),
        {
            "connection_limit": 3,
            "idle_seconds": 5.0,
            "max_body_bytes": 1000,
            "head_timeout": 20.0,
            "body_timeout": 20.0,
            "body_min_bytes_per_second": 500,
        },
    )
    server = server_class(("127.0.0.1", 0), app, spawn=Pool(4), handler_class=HttptoolsHandler)
    server.log = _Log()
    server.start()
    clients = []
    try:
        # Every connection the server may hold: the oldest with its request being run, then two with part of a
        # head.
        for first_bytes in (b"GET /running HTTP/1.1\r\nHost: x\r\n\r\n", SLOW_HEAD[:30], SLOW_HEAD[:30]):
            sock = gsocket.create_connection(("127.0.0.1", server.server_port), timeout=5)
            sock.sendall(first_bytes)
            clients.append(sock)
            gevent.sleep(0.05)
        running, oldest_slow, newest_slow = clients
        assert len(server.pool) == 3
        with gsocket.create_connection(("127.0.0.1", server.server_port), timeout=5) as fresh:
            started = time.monotonic()
            fresh.sendall(b"GET /fresh HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body, _ = _read_response(fresh)
            assert head.startswith(b"HTTP/1.1 200") and body == b"/fresh"
            assert time.monotonic() - started < 3
        received = b""  # the oldest of those waiting for their client was told why, then closed
        while chunk := oldest_slow.recv(65536):
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head
        assert orjson.loads(body)["error"] == "request_timeout"
        release.set()  # the request being run was left alone
        assert _read_response(running)[1] == b"/running"
        newest_slow.sendall(SLOW_HEAD[30:])  # and the newer slow client is still served
        assert _read_response(newest_slow)[1] == b"/healthz"
    finally:
        for sock in clients:
            sock.close()
        server.stop()


class _Slowloris:
    """`n` connections, each sending one byte of a request head every second or so, reconnecting when
    closed."""

    def __init__(self, port: int, n: int):
        self.port, self.n = port, n
        self.reconnects = 0
        self._socks: dict[socket.socket, int] = {}  # each with how much of the head it sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        for _ in range(self.n):
            self._open()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        for sock in self._socks:
            sock.close()

    def _open(self):
        sock = socket.socket()
        sock.setblocking(False)
        if sock.connect_ex(("127.0.0.1", self.port)) not in (0, errno.EINPROGRESS):
            raise OSError("could not connect")
        self._socks[sock] = 0

    def _run(self):
        while not self._stop.wait(1.0):
            for sock, sent in list(self._socks.items()):
                try:
                    sock.send(SLOW_HEAD[sent : sent + 1])
                    self._socks[sock] = sent + 1
                except BlockingIOError:  # still connecting, or the server has not read yet
                    pass
                except OSError:  # closed by the server: come back, as an attacker would
                    del self._socks[sock]
                    sock.close()
                    self._open()
                    self.reconnects += 1


def _held_connections(port: int) -> int:
    """The connections gunicorn's workers hold (accepted: ones still in the listen queue have no process)."""
    ss = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return len(re.findall(r"pid=\d+", ss))


def _healthz_seconds(port: int) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return time.monotonic() - started


# The httptools handler's: the head deadline and the room made at the connection limit.
@pytest.mark.httptools_only
def test_healthz_stays_fast_with_2000_slow_clients_connected(production_env):
    # The default limits: 2 workers of FLOKIT_API_CONNECTIONS (1000) each. Before, 2,000 slow clients held
    # every connection a worker may have; a worker then stops accepting, and a new client waited in the listen
    # queue until a slow one finished or gave up (for good: no answer within 15 s).
    with (
        api_server({**production_env, **HTTPTOOLS}, workers=2) as server,
        _Slowloris(server.port, 2000),
    ):
        deadline = time.monotonic() + 30
        while _held_connections(server.port) < 1950:
            assert time.monotonic() < deadline, (
                f"the slow clients did not connect: {_held_connections(server.port)}"
            )
            time.sleep(0.5)
        time.sleep(2)  # each has sent a few bytes
        seconds = []
        for _ in range(5):
            seconds.append(_healthz_seconds(server.port))
            time.sleep(0.5)
        assert (
            _held_connections(server.port) >= 1900
        )  # the slow clients were still there, holding their share
    assert statistics.median(seconds) < 0.5 and max(seconds) < 2, seconds
