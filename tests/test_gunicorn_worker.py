"""deploy/gunicorn_worker.py: pywsgi with gunicorn's keep-alive setting applied. Real gunicorn, Kafka, Redis."""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace
from urllib.parse import urlsplit

import orjson

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
