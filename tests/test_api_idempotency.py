"""Idempotency-Key through real gunicorn workers: retries replay the original
response, different payloads are refused, concurrent duplicates enqueue once,
across processes (Redis); the 24-hour window with an injected clock."""

from __future__ import annotations

import threading

import orjson
import pytest

from deploy.components import frontdoor_config, make_publisher, make_state
from ingest_api import create_app
from ingest_api.idempotency import IDEMPOTENCY_WINDOW_SECONDS

from .services import ApiServer, api_server, read_events, unique

BATCH = {
    "events": [
        {
            "event": "trial_started",
            "user_id": "usr_i",
            "timestamp": "2024-03-15T14:22:00Z",
            "properties": {"plan_id": "plan_annual_usd", "trial_length_days": 7},
        },
        {"event": "paywall_viewed", "user_id": "usr_i", "timestamp": "2024-03-15T14:20:00Z"},
    ]
}


@pytest.fixture(scope="module")
def server(production_env):
    with api_server(production_env, workers=2) as srv:
        yield srv


def test_retry_replays_and_enqueues_nothing_new(server, workspace_key, kafka_bootstrap, topic):
    workspace, key = workspace_key()
    idem = {"Idempotency-Key": unique("retry")}
    first = server.post("/v1/batch/events", BATCH, key=key, headers=idem)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    # Same JSON, other whitespace and key order: the same request.
    reordered = orjson.dumps({"events": [dict(reversed(list(e.items()))) for e in BATCH["events"]]})
    for data in (orjson.dumps(BATCH), b"  " + reordered):
        again = server.post("/v1/batch/events", data=data, key=key, headers=idem)
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json()
    mismatch = server.post("/v1/batch/events", {"events": BATCH["events"][:1]}, key=key, headers=idem)
    assert mismatch.status_code == 422 and mismatch.json()["error"] == "idempotency_key_mismatch"
    # The same key on the other endpoint is a different request too.
    other = server.post("/v1/events", BATCH["events"][0], key=key, headers=idem)
    assert other.status_code == 422
    events = [e for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace]
    assert sorted(e["event_id"] for e in events) == sorted(first.json()["event_ids"])


def test_validation_failures_are_replayed_too(server, workspace_key):
    _, key = workspace_key()
    idem = {"Idempotency-Key": unique("bad")}
    bad = {"event": "trial_started", "timestamp": "2024-03-15T14:22:00Z"}
    first = server.post("/v1/events", bad, key=key, headers=idem)
    again = server.post("/v1/events", bad, key=key, headers=idem)
    assert first.status_code == again.status_code == 400 and first.json() == again.json()
    assert again.headers["Idempotent-Replayed"] == "true"


SENT = (
    b'{"event":"paywall_viewed","anonymous_id":"dev_A","timestamp":"2024-03-15T14:22:00Z",'
    b'"properties":{"n":1.0,"s":"A/B"}}'
)


@pytest.mark.parametrize(
    "retry, same",
    [
        (
            b' {\n "properties": {"s": "A/B", "n": 1.0},\t"timestamp": "2024-03-15T14:22:00Z",'
            b' "anonymous_id": "dev_A",'
            b' "event": "paywall_viewed"}',
            True,
        ),  # whitespace and key order
        (SENT.replace(b'"A/B"', b'"\\u0041\\/B"').replace(b'"dev_A"', b'"dev_\\u0041"'), True),  # escapes
        (SENT.replace(b"1.0", b"1.00"), True),
        (SENT.replace(b"1.0", b"1e0"), True),
        (SENT.replace(b"1.0", b"1"), False),  # an integer is not the float 1.0
        (SENT.replace(b'"A/B"', b'"a/B"'), False),
    ],
    ids=["whitespace and key order", "string escapes", "1.0 and 1.00", "1.0 and 1e0", "1.0 and 1", "a and A"],
)
def test_what_the_payload_comparison_sees(server, workspace_key, retry, same):
    """README: the parsed document is compared (re-serialised with sorted keys): whitespace, key order and
    string escapes do not count; numbers count as parsed, so 1 and 1.0 differ while 1.0, 1.00 and 1e0 do
    not."""
    _, key = workspace_key()
    idem = {"Idempotency-Key": unique("compare")}
    first = server.post("/v1/events", data=SENT, key=key, headers=idem)
    assert first.status_code == 200, first.text
    again = server.post("/v1/events", data=retry, key=key, headers=idem)
    if same:
        assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true", again.text
        assert again.json() == first.json()
    else:
        assert again.status_code == 422 and again.json()["error"] == "idempotency_key_mismatch", again.text


def test_keys_are_per_workspace(server, workspace_key):
    (_, key_a), (_, key_b) = workspace_key(), workspace_key()
    idem = {"Idempotency-Key": unique("shared")}
    a = server.post("/v1/batch/events", BATCH, key=key_a, headers=idem)
    b = server.post("/v1/batch/events", BATCH, key=key_b, headers=idem)
    assert a.status_code == b.status_code == 200
    assert set(a.json()["event_ids"]).isdisjoint(b.json()["event_ids"])


def test_concurrent_duplicates_across_processes_enqueue_once(
    server, production_env, workspace_key, kafka_bootstrap, topic
):
    """20 identical requests at once, spread over two gunicorn servers of two workers each."""
    workspace, key = workspace_key(rate_limit_per_minute=10_000)
    idem = {"Idempotency-Key": unique("race")}
    second = ApiServer(production_env, workers=2).start()
    try:
        barrier = threading.Barrier(20)
        responses = []

        def send(i):
            target = server if i % 2 else second
            barrier.wait()
            responses.append(target.post("/v1/batch/events", BATCH, key=key, headers=idem))

        threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        second.stop()
    ok = [r for r in responses if r.status_code == 200]
    assert {r.status_code for r in responses} <= {200, 409} and ok
    assert all(
        r.json()["error"] == "idempotency_request_in_progress" and r.headers["Retry-After"] == "1"
        for r in responses
        if r.status_code == 409
    )
    assert len({tuple(r.json()["event_ids"]) for r in ok}) == 1
    events = [e for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace]
    assert sorted(e["event_id"] for e in events) == sorted(ok[0].json()["event_ids"])


def test_the_window_is_24_hours(settings_for, redis_state, kafka_bootstrap, topic):
    """In-process app on the same real Redis and Kafka, with an injected clock."""
    now = [1_900_000_000.0]
    app = create_app(
        frontdoor_config(settings_for),
        publisher=make_publisher(settings_for),
        state=make_state(settings_for),
        clock=lambda: now[0],
    )
    workspace = unique("ws")
    key = redis_state.create_key(workspace)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "daily-sync"}

    def post():
        return client.post(
            "/v1/batch/events", data=orjson.dumps(BATCH), headers=headers, content_type="application/json"
        )

    first = post().get_json()
    now[0] += IDEMPOTENCY_WINDOW_SECONDS - 1
    assert post().get_json() == first
    now[0] += 1
    later = post().get_json()
    assert later["accepted"] == 2 and set(later["event_ids"]).isdisjoint(first["event_ids"])
    events = [e for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace]
    assert sorted(e["event_id"] for e in events) == sorted(first["event_ids"] + later["event_ids"])
    app.extensions["flokit"].publisher.close()
