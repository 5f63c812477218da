"""Broker stopped → 503 with Retry-After within the bounded time, nothing claimed as accepted, /readyz not
ready; an idle front door recovers when the broker returns, and a retry with the same Idempotency-Key keeps
its event ids.

Stops the session's broker (KAFKA_PORT) and always starts it again, for the modules after this one."""

from __future__ import annotations

import time

import requests

from ingest_api.enqueue import MAY_ARRIVE, NOT_QUEUED

from .conftest import KAFKA_PORT
from .services import api_server, read_events, run_script, unique

EVENT = {"event": "purchase_started", "user_id": "usr_q", "timestamp": "2024-03-15T14:22:00Z"}


def test_broker_down_means_503_and_nothing_accepted(production_env, kafka_bootstrap, redis_state):
    env = {**production_env, "FLOKIT_ENQUEUE_TIMEOUT_SECONDS": "2"}
    workspace = unique("ws")
    key = redis_state.create_key(workspace)
    with api_server(env, workers=1) as server:
        before = server.post("/v1/events", {**EVENT, "properties": {"n": 1}}, key=key)
        assert before.status_code == 200

        run_script("kafka.sh", "stop", KAFKA_PORT=KAFKA_PORT)
        try:
            started = time.monotonic()
            down = server.post("/v1/batch/events", {"events": [{**EVENT, "properties": {"n": 2}}]}, key=key)
            elapsed = time.monotonic() - started
            assert down.status_code == 503, down.text
            assert down.json()["error"] == "queue_unavailable" and down.json()["message"] in (
                MAY_ARRIVE,
                NOT_QUEUED,
            )
            assert "event_ids" not in down.json() and "127.0.0.1" not in down.text
            assert int(down.headers["Retry-After"]) > 0
            assert elapsed < 10  # bounded by FLOKIT_ENQUEUE_TIMEOUT_SECONDS, not by Kafka's own minutes
            retry_key = {"Idempotency-Key": unique("down")}
            assert (
                server.post(
                    "/v1/events", {**EVENT, "properties": {"n": 3}}, key=key, headers=retry_key
                ).status_code
                == 503
            )
            assert requests.get(server.url + "/readyz", timeout=15).status_code == 503
        finally:
            run_script("kafka.sh", "start", KAFKA_PORT=KAFKA_PORT)
        deadline = time.monotonic() + 60
        while (
            after := server.post("/v1/events", {**EVENT, "properties": {"n": 3}}, key=key, headers=retry_key)
        ).status_code != 200:
            assert after.status_code == 503 and time.monotonic() < deadline
            time.sleep(1)
        assert requests.get(server.url + "/readyz", timeout=15).status_code == 200

    events = [e for e in read_events(kafka_bootstrap, env["FLOKIT_TOPIC"]) if e["_workspace"] == workspace]
    by_n = {}
    for e in events:
        by_n.setdefault(e["properties"]["n"], set()).add(e["event_id"])
    assert by_n[1] == {before.json()["event_id"]}
    # The retried request kept one event id across its attempts, so consumers
    # dedupe any copy an earlier attempt left behind.
    assert by_n[3] == {after.json()["event_id"]}
    # The 503'd batch expired in the producer (delivery timeout = enqueue timeout) while the broker was away:
    # it never reached the topic, let alone was reported accepted.
    assert 2 not in by_n
