"""Broker stopped → 503 with Retry-After within the bounded time, nothing
claimed as accepted; the front door recovers when the broker returns.

Uses a broker of its own (another port and data directory) so stopping it
disturbs no other test."""
from __future__ import annotations

import time

import pytest
import requests

from deploy.queue.kafka_queue import create_topics

from .services import api_server, read_events, run_script, unique

PORT = "19292"
EVENT = {"event": "purchase_started", "user_id": "usr_q", "timestamp": "2024-03-15T14:22:00Z"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    env = {"KAFKA_PORT": PORT, "KAFKA_DIR": str(tmp_path_factory.mktemp("kafka"))}
    run_script("kafka.sh", "start", **env)
    yield env
    run_script("kafka.sh", "stop", **env)


def test_broker_down_means_503_and_nothing_accepted(broker, redis_url, redis_state, tmp_path):
    bootstrap = f"127.0.0.1:{PORT}"
    topic = unique("down")
    create_topics(bootstrap, {topic: 2})
    env = {"FLOKIT_KAFKA_BOOTSTRAP": bootstrap, "FLOKIT_REDIS_URL": redis_url, "FLOKIT_TOPIC": topic,
           "FLOKIT_DATA_DIR": str(tmp_path), "FLOKIT_ENQUEUE_TIMEOUT_SECONDS": "2"}
    workspace = unique("ws")
    key = redis_state.create_key(workspace)
    with api_server(env, workers=1) as server:
        before = server.post("/v1/events", {**EVENT, "properties": {"n": 1}}, key=key)
        assert before.status_code == 200

        run_script("kafka.sh", "stop", **broker)
        started = time.monotonic()
        down = server.post("/v1/batch/events", {"events": [{**EVENT, "properties": {"n": 2}}]}, key=key)
        elapsed = time.monotonic() - started
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "queue_unavailable" and "nothing was accepted" in down.json()["message"]
        assert "event_ids" not in down.json() and "127.0.0.1" not in down.text
        assert int(down.headers["Retry-After"]) > 0
        assert elapsed < 10  # bounded by FLOKIT_ENQUEUE_TIMEOUT_SECONDS, not by Kafka's own minutes
        retry_key = {"Idempotency-Key": unique("down")}
        assert server.post("/v1/events", {**EVENT, "properties": {"n": 3}}, key=key, headers=retry_key).status_code == 503
        assert requests.get(server.url + "/readyz", timeout=15).status_code == 503

        run_script("kafka.sh", "start", **broker)
        deadline = time.monotonic() + 60
        while (after := server.post("/v1/events", {**EVENT, "properties": {"n": 3}}, key=key,
                                    headers=retry_key)).status_code != 200:
            assert after.status_code == 503 and time.monotonic() < deadline
            time.sleep(1)
        assert requests.get(server.url + "/readyz", timeout=15).status_code == 200

    events = [e for e in read_events(bootstrap, topic) if e["_workspace"] == workspace]
    by_n = {}
    for e in events:
        by_n.setdefault(e["properties"]["n"], set()).add(e["event_id"])
    assert by_n[1] == {before.json()["event_id"]}
    # The retried request kept one event id across its attempts, so consumers
    # dedupe any copy an earlier attempt left behind.
    assert by_n[3] == {after.json()["event_id"]}
    # The 503'd batch expired in the producer (delivery timeout = enqueue timeout):
    # it never reached the topic, let alone was reported accepted.
    assert 2 not in by_n
