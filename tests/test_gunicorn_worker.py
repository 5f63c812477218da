"""deploy/gunicorn_worker.py: gunicorn's keep-alive setting, connections spread over the workers, the start-up
freeze. Real gunicorn, Kafka, Redis (HTTP itself: tests/test_http_handler.py)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import orjson
import pytest

from .services import BALANCE_ON, HTTPTOOLS, api_server

EVENT = orjson.dumps({"event": "paywall_viewed", "user_id": "usr_1", "timestamp": "2024-03-15T14:22:00Z"})


def _request(key: str) -> bytes:
    return (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(EVENT)
        + EVENT
    )


def _response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def _connect(server) -> socket.socket:
    url = urlsplit(server.url)
    return socket.create_connection((url.hostname, url.port), timeout=10)


# The httptools handler's: pywsgi's keeps an idle connection open until the client closes it.
@pytest.mark.httptools_only
def test_an_idle_keep_alive_connection_is_closed_after_keepalive_seconds(production_env, workspace_key):
    key = workspace_key(rate_limit_per_minute=100_000)[1]
    with api_server({**production_env, **HTTPTOOLS, "FLOKIT_API_KEEPALIVE_SECONDS": "1"}) as server:
        with _connect(server) as sock:
            for _ in range(2):  # kept alive between requests sent back to back
                sock.sendall(_request(key))
                assert _response(sock).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            assert sock.recv(1) == b""  # the server closed it
            assert 0.5 < time.monotonic() - started < 5


# The httptools handler's: pywsgi's keeps every HTTP/1.1 connection alive, whatever gunicorn's keepalive.
@pytest.mark.httptools_only
def test_keepalive_0_serves_one_request_per_connection(production_env, workspace_key):
    key = workspace_key(rate_limit_per_minute=100_000)[1]
    with api_server({**production_env, **HTTPTOOLS, "FLOKIT_API_KEEPALIVE_SECONDS": "0"}) as server:
        for _ in range(2):
            with _connect(server) as sock:
                sock.sendall(_request(key))
                assert _response(sock).startswith(b"HTTP/1.1 200")
                assert sock.recv(1) == b""


# --- connections spread over the workers (deploy/worker_balance.py) ---


# The connection balance's: without it gevent's accept loop often gave one worker every connection.
@pytest.mark.balance_only
def test_connections_opened_at_once_are_spread_over_the_workers(production_env, workspace_key):
    # 24 keep-alive connections opened back to back, before any request, as a client's pool (or wrk) does.
    # Without the balance one worker often took all of them (8 of 8 in two of three scratch runs).
    import re
    import subprocess
    from collections import Counter

    key = workspace_key(rate_limit_per_minute=100_000)[1]
    with api_server({**production_env, **BALANCE_ON}, workers=2) as server:
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
            ss = subprocess.run(
                ["ss", "-tnpH", "state", "established", f"( sport = :{server.port} )"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
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
    worker_balance._SLOT.pack_into(
        table, 3 * worker_balance._SLOT.size, 103, 0, time.monotonic() - worker_balance.STALE_SECONDS - 1
    )
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
