"""What reaches Kafka: every field of every accepted event, nothing of the
rejected ones, whole 1,000-event batches, devices kept on one partition."""

from __future__ import annotations

import pytest

from schemas import envelope

from .services import api_server, read_events, read_topic


@pytest.fixture(scope="module")
def server(production_env):
    with api_server(production_env) as srv:
        yield srv


def event(i: int, **fields) -> dict:
    return {
        "event": "paywall_viewed",
        "anonymous_id": f"dev_{i % 7}",
        "timestamp": f"2024-03-15T14:{i % 60:02d}:00+02:00",
        "properties": {"paywall_id": f"pw_{i}", "price": 9.99, "nested": {"a": [1, {"b": None}]}},
        **fields,
    }


def test_partial_batch_enqueues_exactly_the_valid_events(server, workspace_key, kafka_bootstrap, topic):
    workspace, key = workspace_key()
    items = [event(0), {"event": "bad"}, event(2, user_id="usr_2"), event(3, timestamp="nope"), event(4)]
    resp = server.post("/v1/batch/events", {"events": items}, key=key)
    body = resp.json()
    assert resp.status_code == 200 and (body["accepted"], body["rejected"]) == (3, 2)
    assert [(e["index"], e["error"]) for e in body["errors"]] == [
        (1, "missing_identity"),
        (3, "invalid_timestamp"),
    ]
    assert all(e["message"] for e in body["errors"])

    got = {e["event_id"]: e for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace}
    assert set(got) == set(body["event_ids"])
    for event_id, index in zip(body["event_ids"], [0, 2, 4], strict=True):
        sent = items[index]
        assert got[event_id]["event"] == sent["event"]
        assert got[event_id]["anonymous_id"] == sent["anonymous_id"]
        assert got[event_id]["user_id"] == sent.get("user_id")
        assert got[event_id]["properties"] == sent["properties"]
        # +02:00 → UTC
        minute = index % 60
        assert got[event_id]["timestamp"] == f"2024-03-15T12:{minute:02d}:00.000Z"
        assert got[event_id]["_partition"] == envelope.partition_for(sent["anonymous_id"], 4)


def test_thousand_event_batch_arrives_whole(server, workspace_key, kafka_bootstrap, topic):
    workspace, key = workspace_key()
    items = [event(i, properties={"paywall_id": "p", "padding": "x" * 5000, "i": i}) for i in range(1000)]
    resp = server.post("/v1/batch/events", {"events": items}, key=key)
    assert resp.status_code == 200 and resp.json()["accepted"] == 1000
    ids = resp.json()["event_ids"]
    assert len(set(ids)) == 1000 and ids == sorted(ids)
    got = [e for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace]
    assert sorted(e["event_id"] for e in got) == ids
    assert sorted(e["properties"]["i"] for e in got) == list(range(1000))
    # 5 MB of events: split into several records, each under the broker's limit.
    records = [
        v for _, _, v in read_topic(kafka_bootstrap, topic) if envelope.decode(v).workspace == workspace
    ]
    assert len(records) > 4 and max(map(len, records)) <= envelope.MAX_RECORD_BYTES


def test_device_events_share_a_partition_and_keep_order(server, workspace_key, kafka_bootstrap, topic):
    workspace, key = workspace_key()
    for step in range(5):  # anonymous-only, then the linking event, then anonymous-only again
        fields = {"user_id": "usr_linked"} if step == 2 else {}
        resp = server.post(
            "/v1/events",
            {
                "event": "paywall_viewed",
                "anonymous_id": "dev_order",
                "timestamp": "2024-03-15T14:00:00Z",
                "properties": {"step": step},
                **fields,
            },
            key=key,
        )
        assert resp.status_code == 200
    got = [e for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace]
    assert {e["_partition"] for e in got} == {envelope.partition_for("dev_order", 4)}
    assert [e["properties"]["step"] for e in got] == [0, 1, 2, 3, 4]


def test_strict_workspace_refuses_custom_events(server, workspace_key):
    _, strict = workspace_key(strict_events=True)
    _, custom = workspace_key()
    custom_event = {"event": "onboarding_quiz_done", "user_id": "u", "timestamp": "2024-03-15T14:00:00Z"}
    assert server.post("/v1/events", custom_event, key=custom).status_code == 200
    resp = server.post("/v1/events", custom_event, key=strict)
    assert resp.status_code == 400 and resp.json()["error"] == "unknown_event"
    taxonomy_event = {**custom_event, "event": "trial_started"}
    assert server.post("/v1/events", taxonomy_event, key=strict).status_code == 200


def test_health_and_readiness(server):
    import requests

    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(server.url + "/readyz", timeout=10).json() == {"status": "ok"}
