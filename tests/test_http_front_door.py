"""The front door's HTTP edges as a client meets them: a real gunicorn (deploy/gunicorn_worker.py), Kafka and
Redis. (The handler's own cases, in-process: tests/test_http_handler.py.)"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import orjson
import pytest
import requests

from .services import HTTPTOOLS, api_server, read_events

EVENT = {"event": "paywall_viewed", "user_id": "usr_1", "timestamp": "2024-03-15T14:22:00Z"}


@pytest.fixture(scope="module")
def server(production_env):
    with api_server(production_env) as srv:
        yield srv


@pytest.fixture(scope="module")
def httptools_server(production_env):
    """For the properties only the httptools handler provides (FLOKIT_HTTP_PARSER=httptools)."""
    with api_server({**production_env, **HTTPTOOLS}) as srv:
        yield srv


def _exchange(server, raw: bytes) -> bytes:
    """Send `raw` in one packet, read until the server closes."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as sock:
        sock.sendall(raw)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _responses(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) of each response in `raw` (each with Content-Length)."""
    responses = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        responses.append((head, rest[:length]))
        raw = rest[length:]
    return responses


# --- a valid request followed by bytes that cannot be parsed ---


# The httptools handler's: pywsgi's answers garbage with a 400 of its own shape and keeps the connection open.
@pytest.mark.httptools_only
def test_a_valid_request_before_garbage_is_answered_then_the_400(httptools_server):
    server = httptools_server
    # The client reads the first answer as its request's: a 400 there would be final and the request lost.
    received = _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nBAD\x01 / HTTP/1.1\r\n\r\n")
    (first_head, first_body), (second_head, second_body) = _responses(received)
    assert first_head.startswith(b"HTTP/1.1 200") and orjson.loads(first_body) == {"status": "ok"}
    assert second_head.startswith(b"HTTP/1.1 400") and b"Connection: close" in second_head
    assert orjson.loads(second_body)["error"] == "invalid_http"


def test_a_valid_event_before_garbage_is_enqueued_and_answered_200(
    server, workspace_key, kafka_bootstrap, topic
):
    workspace, key = workspace_key(rate_limit_per_minute=100_000)
    body = orjson.dumps(EVENT)
    raw = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
        + b"\x00\x01 garbage \xff\r\n\r\n"
    )
    (head, answer), (error_head, _) = _responses(_exchange(server, raw))
    assert head.startswith(b"HTTP/1.1 200"), (head, answer)
    event_id = orjson.loads(answer)["event_id"]
    assert error_head.startswith(b"HTTP/1.1 400")
    assert [e["event_id"] for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace] == [
        event_id
    ]


# The httptools handler's: pywsgi's closes the connection without saying so in a Connection header.
@pytest.mark.httptools_only
def test_what_follows_a_connection_close_request_is_ignored(httptools_server):
    server = httptools_server
    received = _exchange(
        server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    ((head, body),) = _responses(received)  # one answer, no 400 after it
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head


# --- 405 carries Allow (RFC 9110, 15.5.6) ---


@pytest.mark.parametrize(
    "path, method, allowed",
    [
        ("/v1/events", "TRACE", {"POST", "OPTIONS"}),
        ("/v1/batch/events", "GET", {"POST", "OPTIONS"}),
        ("/v1/batch/events", "TRACE", {"POST", "OPTIONS"}),
        ("/healthz", "POST", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_a_405_says_which_methods_are_allowed_in_the_apis_shape(server, path, method, allowed):
    resp = requests.request(method, server.url + path, timeout=10)
    assert resp.status_code == 405
    assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed
    assert resp.headers["Content-Type"] == "application/json"  # ours, not Werkzeug's text/html
    body = resp.json()
    assert body["error"] == "method_not_allowed" and body["message"]
