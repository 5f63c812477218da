"""The API reference's curl examples, verbatim but for the host, against a
running gunicorn server on real Kafka and Redis; what they enqueue is read back
from the topic and compared field by field."""

from __future__ import annotations

import re
import subprocess

import orjson
import pytest

from .services import api_server, read_events

SINGLE = """curl -X POST https://api.flokit.ai/v1/events \\
  -H "Authorization: Bearer $FLOKIT_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "event": "paywall_viewed",
    "user_id": "usr_abc123",
    "timestamp": "2024-03-15T14:22:00Z",
    "properties": {
      "paywall_id": "pw_annual_v3",
      "offer_id": "offer_intro_50pct",
      "plan_ids": ["plan_annual_usd", "plan_monthly_usd"],
      "context": "onboarding_step_3"
    }
  }'"""

BATCH = """curl -X POST https://api.flokit.ai/v1/batch/events \\
  -H "Authorization: Bearer $FLOKIT_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{
    "events": [
      {
        "event": "paywall_viewed",
        "user_id": "usr_abc123",
        "timestamp": "2024-03-15T14:20:00Z",
        "properties": {
          "paywall_id": "pw_annual_v3",
          "context": "onboarding_step_3"
        }
      },
      {
        "event": "trial_started",
        "user_id": "usr_abc123",
        "timestamp": "2024-03-15T14:22:00Z",
        "properties": {
          "plan_id": "plan_annual_usd",
          "trial_length_days": 7
        }
      }
    ]
  }'"""

EVENT_ID = re.compile(r"evt_[0-9a-hjkmnp-tv-z]{26}")


@pytest.fixture(scope="module")
def server(production_env):
    with api_server(production_env) as srv:
        yield srv


def run_curl(example: str, base_url: str, key: str) -> dict:
    command = example.replace("https://api.flokit.ai", base_url) + " --silent --show-error"
    out = subprocess.run(
        ["bash", "-c", command],
        env={"FLOKIT_API_KEY": key, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
        timeout=30,
    )
    return orjson.loads(out.stdout)


def test_reference_examples_verbatim(server, workspace_key, kafka_bootstrap, topic):
    workspace, key = workspace_key()
    single = run_curl(SINGLE, server.url, key)
    assert (
        single["status"] == "ok"
        and EVENT_ID.fullmatch(single["event_id"])
        and set(single) == {"status", "event_id"}
    )

    batch = run_curl(BATCH, server.url, key)
    assert {k: batch[k] for k in ("status", "accepted", "rejected", "errors")} == {
        "status": "ok",
        "accepted": 2,
        "rejected": 0,
        "errors": [],
    }
    assert len(batch["event_ids"]) == 2 and all(EVENT_ID.fullmatch(i) for i in batch["event_ids"])
    assert batch["event_ids"] == sorted(batch["event_ids"])  # time-sortable, in request order

    events = {e["event_id"]: e for e in read_events(kafka_bootstrap, topic) if e["_workspace"] == workspace}
    assert set(events) == {single["event_id"], *batch["event_ids"]}

    def strip(e):
        return {k: v for k, v in e.items() if not k.startswith("_")}

    assert strip(events[single["event_id"]]) == {
        "event_id": single["event_id"],
        "event": "paywall_viewed",
        "user_id": "usr_abc123",
        "anonymous_id": None,
        "timestamp": "2024-03-15T14:22:00.000Z",
        "properties": {
            "paywall_id": "pw_annual_v3",
            "offer_id": "offer_intro_50pct",
            "plan_ids": ["plan_annual_usd", "plan_monthly_usd"],
            "context": "onboarding_step_3",
        },
    }
    first, second = (strip(events[i]) for i in batch["event_ids"])
    assert first == {
        "event_id": batch["event_ids"][0],
        "event": "paywall_viewed",
        "user_id": "usr_abc123",
        "anonymous_id": None,
        "timestamp": "2024-03-15T14:20:00.000Z",
        "properties": {"paywall_id": "pw_annual_v3", "context": "onboarding_step_3"},
    }
    assert second == {
        "event_id": batch["event_ids"][1],
        "event": "trial_started",
        "user_id": "usr_abc123",
        "anonymous_id": None,
        "timestamp": "2024-03-15T14:22:00.000Z",
        "properties": {"plan_id": "plan_annual_usd", "trial_length_days": 7},
    }
    # received_at is the server's clock at acceptance, in UTC with milliseconds.
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["_received_at"]) for e in events.values()
    )
