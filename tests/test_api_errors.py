"""Every error path of the front door: status, stable `error` code and a
`message` that says what to fix. Real gunicorn, Kafka and Redis."""

from __future__ import annotations

import gzip

import orjson
import pytest
import requests

from .services import api_server

GOOD = {"event": "paywall_viewed", "user_id": "usr_1", "timestamp": "2024-03-15T14:22:00Z"}


@pytest.fixture(scope="module")
def server(production_env):
    with api_server({**production_env, "FLOKIT_MAX_BODY_BYTES": "200000"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def key(workspace_key):
    return workspace_key(rate_limit_per_minute=100_000)[1]


def assert_error(resp: requests.Response, status: int, code: str, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    for word in words:
        assert word in body["message"], body["message"]
    return body


@pytest.mark.parametrize(
    "headers, code",
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "invalid_api_key"),
        ({"Authorization": "Bearer "}, "invalid_api_key"),
        ({"Authorization": "Bearer fk_000000000000_nope"}, "invalid_api_key"),
        ({"Authorization": "Bearer garbage"}, "invalid_api_key"),
    ],
)
def test_auth_errors(server, headers, code):
    resp = requests.post(
        server.url + "/v1/events",
        data=orjson.dumps(GOOD),
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )
    assert_error(resp, 401, code, "Bearer" if code == "missing_api_key" else "")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_key_is_refused(server, redis_state, workspace_key):
    _, key = workspace_key()
    assert server.post("/v1/events", GOOD, key=key).status_code == 200
    assert redis_state.revoke_key(key.split("_")[1])
    assert_error(server.post("/v1/events", GOOD, key=key), 401, "invalid_api_key", "revoked")


def test_auth_comes_before_body_checks(server):
    assert_error(server.post("/v1/events", data=b"{not json"), 401, "missing_api_key")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None, "application/json; charset=latin-1"],
)
def test_wrong_content_type(server, key, content_type):
    headers = {"Authorization": f"Bearer {key}"}
    if content_type:
        headers["Content-Type"] = content_type
    resp = requests.post(server.url + "/v1/events", data=orjson.dumps(GOOD), headers=headers, timeout=10)
    assert_error(resp, 415, "unsupported_media_type")


def test_json_with_charset_is_fine(server, key):
    resp = server.post(
        "/v1/events", GOOD, key=key, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    "data, code, word",
    [
        (b"", "invalid_json", "empty"),
        (b"   ", "invalid_json", "empty"),
        (b'{"event": "paywall_viewed",', "invalid_json", "JSON"),
        (b"\xff\xfe{}", "invalid_utf8", "UTF-8"),
        (b'{"event": "caf\xe9"}', "invalid_utf8", "UTF-8"),
        (b"[1, 2]", "invalid_event_object", "object"),
        (b'"just a string"', "invalid_event_object", "object"),
    ],
)
def test_malformed_bodies_are_400(server, key, data, code, word):
    assert_error(server.post("/v1/events", data=data, key=key), 400, code, word)


@pytest.mark.parametrize(
    "event, code, field",
    [
        ({k: v for k, v in GOOD.items() if k != "event"}, "missing_event", "event"),
        ({**GOOD, "event": "Paywall Viewed"}, "invalid_event_name", "event"),
        ({**GOOD, "event": 42}, "invalid_event_name", "event"),
        ({"event": "paywall_viewed", "timestamp": "2024-03-15T14:22:00Z"}, "missing_identity", "user_id"),
        ({**GOOD, "user_id": ""}, "invalid_user_id", "user_id"),
        ({**GOOD, "anonymous_id": 17}, "invalid_anonymous_id", "anonymous_id"),
        ({k: v for k, v in GOOD.items() if k != "timestamp"}, "missing_timestamp", "timestamp"),
        ({**GOOD, "timestamp": "yesterday"}, "invalid_timestamp", "timestamp"),
        ({**GOOD, "timestamp": "2024-03-15T14:22:00"}, "invalid_timestamp", "offset"),
        ({**GOOD, "timestamp": "2016-12-31T23:59:60Z"}, "invalid_timestamp", "leap second"),
        ({**GOOD, "timestamp": "2999-01-01T00:00:00Z"}, "invalid_timestamp", "future"),
        ({**GOOD, "properties": [1, 2]}, "invalid_properties", "properties"),
        (
            {**GOOD, "properties": {"trial_length_days": "seven"}},
            "invalid_property_type",
            "trial_length_days",
        ),
        ({**GOOD, "properties": {"renewal_number": 2**64 - 1}}, "invalid_property_type", "out of range"),
        ({**GOOD, "context": {"ip": "1.2.3.4"}}, "unknown_field", "context"),
    ],
)
def test_invalid_single_events(server, key, event, code, field):
    assert_error(server.post("/v1/events", event, key=key), 400, code, field)


def test_body_too_large(server, key):
    big = {**GOOD, "properties": {"blob": "x" * 250_000}}
    assert_error(server.post("/v1/events", big, key=key), 413, "payload_too_large", "200000")


def test_gzip_bomb_is_capped(server, key):
    bomb = gzip.compress(b'{"events": [' + b" " * 5_000_000 + b"]}")
    assert len(bomb) < 200_000
    resp = server.post("/v1/batch/events", data=bomb, key=key, headers={"Content-Encoding": "gzip"})
    assert_error(resp, 413, "payload_too_large", "decompressed")


def test_gzip_body_is_accepted(server, key):
    resp = server.post(
        "/v1/events", data=gzip.compress(orjson.dumps(GOOD)), key=key, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status_code == 200 and resp.json()["status"] == "ok"


def test_bytes_after_the_gzip_data_are_refused(server, key):
    for trailer in (b"garbage", b"\0\0\0\0", b"\x1f"):
        resp = server.post(
            "/v1/events",
            data=gzip.compress(orjson.dumps(GOOD)) + trailer,
            key=key,
            headers={"Content-Encoding": "gzip"},
        )
        assert_error(resp, 400, "invalid_body", f"{len(trailer)} byte", "after the gzip data")


def test_every_gzip_member_is_decoded(server, key):
    """A body of several gzip members (concatenated gzip files) is their contents one after the other."""
    other = {**GOOD, "event": "paywall_dismissed"}
    text = orjson.dumps({"events": [GOOD, other]})
    members = b"".join(gzip.compress(text[i : i + 20]) for i in range(0, len(text), 20))
    resp = server.post("/v1/batch/events", data=members, key=key, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 2


def test_the_decompressed_cap_holds_across_gzip_members(server, key):
    # Each member within the 200000-byte cap, together over it.
    text = b'{"events": [' + b" " * 250_000 + orjson.dumps(GOOD) + b"]}"
    members = b"".join(gzip.compress(text[i : i + 90_000]) for i in range(0, len(text), 90_000))
    resp = server.post("/v1/batch/events", data=members, key=key, headers={"Content-Encoding": "gzip"})
    assert_error(resp, 413, "payload_too_large", "decompressed")


def test_a_gzip_body_has_at_most_1000_members(server, key):
    empty = gzip.compress(b"")
    one_event = gzip.compress(orjson.dumps(GOOD))
    resp = server.post(
        "/v1/events", data=one_event + empty * 999, key=key, headers={"Content-Encoding": "gzip"}
    )
    assert resp.status_code == 200, resp.text
    resp = server.post(
        "/v1/events", data=one_event + empty * 1000, key=key, headers={"Content-Encoding": "gzip"}
    )
    assert_error(resp, 400, "invalid_body", "1000 gzip members")


def test_bad_gzip_and_unknown_encoding(server, key):
    assert_error(
        server.post("/v1/events", data=b"not gzip", key=key, headers={"Content-Encoding": "gzip"}),
        400,
        "invalid_body",
        "gzip",
    )
    assert_error(
        server.post("/v1/events", data=orjson.dumps(GOOD), key=key, headers={"Content-Encoding": "br"}),
        415,
        "unsupported_content_encoding",
        "br",
    )


@pytest.mark.parametrize(
    "body, code",
    [
        ([GOOD], "invalid_body"),
        ({"events": GOOD}, "invalid_batch"),
        ({}, "invalid_batch"),
        ({"events": []}, "batch_empty"),
        ({"events": [GOOD] * 1001}, "batch_too_large"),
        ({"events": [GOOD], "extra": 1}, "unknown_field"),
    ],
)
def test_invalid_batches(server, key, body, code):
    assert_error(server.post("/v1/batch/events", body, key=key), 400, code)


def test_batch_with_nothing_valid(server, key):
    body = assert_error(
        server.post("/v1/batch/events", {"events": [{"event": "x"}, 5]}, key=key), 400, "no_valid_events"
    )
    assert (body["accepted"], body["rejected"], body["event_ids"]) == (0, 2, [])
    assert [(e["index"], e["error"]) for e in body["errors"]] == [
        (0, "missing_identity"),
        (1, "invalid_event_object"),
    ]


def test_invalid_idempotency_key(server, key):
    resp = server.post("/v1/events", GOOD, key=key, headers={"Idempotency-Key": "has spaces in it"})
    assert_error(resp, 400, "invalid_idempotency_key", "Idempotency-Key")


def test_unknown_routes_and_methods_answer_json(server, key):
    assert_error(requests.get(server.url + "/v1/nope", timeout=10), 404, "not_found")
    assert_error(requests.get(server.url + "/v1/events", timeout=10), 405, "method_not_allowed")


def test_a_body_shorter_than_its_content_length_is_a_json_4xx(server, key):
    """A client that sends part of its body and stops (half-closes) gets our error shape, not a 500."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"event": "payw'
        )
        sock.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, raw
    doc = orjson.loads(body)
    assert doc["error"] and doc["message"]


def test_an_unexpected_error_on_the_ingest_path_is_a_logged_json_500(tmp_path, caplog):
    """A bug cannot be produced for real: a state store that raises stands in for one. The ingest routes
    skip Flask (ingest_api.fast_routes) and must still answer in the API's shape."""
    from deploy.queue.local_log import LocalLogPublisher
    from ingest_api import create_app
    from ingest_api.config import FrontDoorConfig
    from ingest_api.state.sqlite_state import SqliteState

    class BrokenState(SqliteState):
        def admit_many(self, requests, default_limit):
            raise RuntimeError("a bug")

    app = create_app(
        FrontDoorConfig(),
        publisher=LocalLogPublisher(tmp_path / "q.sqlite3", 4, 5),
        state=BrokenState(tmp_path / "state.sqlite3"),
    )
    resp = app.test_client().post("/v1/events", json=GOOD, headers={"Authorization": "Bearer fk_x_y"})
    assert resp.status_code == 500
    assert resp.get_json()["error"] == "internal_error" and "logged" in resp.get_json()["message"]
    assert "a bug" in caplog.text


def test_the_shared_state_not_answering_is_a_503_not_a_500(tmp_path):
    """Redis down, for real: nothing listens on port 1. The key check (and an Idempotency-Key's record) cannot
    be made, so nothing is accepted, and the client is told to retry, not that the server failed."""
    from deploy.queue.local_log import LocalLogPublisher, LocalLogSubscriber
    from ingest_api import create_app
    from ingest_api.config import FrontDoorConfig
    from ingest_api.state.redis_state import RedisState

    queue = LocalLogPublisher(tmp_path / "q.sqlite3", 4, 5)
    app = create_app(FrontDoorConfig(), publisher=queue, state=RedisState("redis://127.0.0.1:1/0"))
    key = "fk_0123456789ab_" + "s" * 43
    for headers in ({}, {"Idempotency-Key": "k1"}):
        resp = app.test_client().post(
            "/v1/events", json=GOOD, headers={"Authorization": f"Bearer {key}", **headers}
        )
        assert resp.status_code == 503 and resp.headers["Retry-After"] == "5"
        assert resp.get_json()["error"] == "state_unavailable" and "retry later" in resp.get_json()["message"]
    assert LocalLogSubscriber(tmp_path / "q.sqlite3", "check").poll(100, 0.1) == []  # nothing was queued


def test_an_ingest_request_leaves_no_garbage_cycle(tmp_path):
    # A reference cycle per request (Werkzeug's Request used to put itself in its environ) leaves everything
    # of a request to the cyclic collector instead of being freed when it ends: in a gevent worker that
    # meant more collections, and longer ones, over the requests in flight. Once answered, a request's
    # objects must be freed by reference counting alone.
    import gc

    from werkzeug.test import EnvironBuilder

    from deploy.queue.local_log import LocalLogPublisher
    from ingest_api import create_app
    from ingest_api.config import FrontDoorConfig
    from ingest_api.state.sqlite_state import SqliteState

    state = SqliteState(tmp_path / "state.sqlite3")
    state.configure_workspace("w", rate_limit_per_minute=10**9)
    key = state.create_key("w")
    app = create_app(
        FrontDoorConfig(), publisher=LocalLogPublisher(tmp_path / "q.sqlite3", 4, 5), state=state
    )
    body = orjson.dumps(GOOD)

    def one_request() -> str:
        environ = EnvironBuilder(
            path="/v1/events",
            method="POST",
            data=body,
            content_type="application/json",
            headers={"Authorization": f"Bearer {key}"},
        ).get_environ()
        statuses = []
        b"".join(app.wsgi_app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
        return statuses[0]

    assert one_request().startswith("200")  # warm: connections, caches
    gc.collect()
    gc.disable()
    try:
        assert all(one_request().startswith("200") for _ in range(20))
        assert gc.collect() == 0
    finally:
        gc.enable()
