"""`flokit keys`, `flokit workspace`, `flokit kafka init` and `flokit queue` as an operator runs them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from kafka.admin import KafkaAdminClient

from deploy.queue.local_log import LocalLogPublisher, LocalLogSubscriber
from ingest_api.state.redis_state import RedisState
from ingest_api.state.sqlite_state import SqliteState
from schemas.queue import Record

from .services import unique


def flokit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(params=["sqlite", "redis"])
def env_and_state(request, tmp_path):
    env = {"FLOKIT_DATA_DIR": str(tmp_path)}
    if request.param == "redis":
        env["FLOKIT_REDIS_URL"] = request.getfixturevalue("redis_url")
        return env, RedisState(env["FLOKIT_REDIS_URL"])
    return env, SqliteState(tmp_path / "frontdoor.sqlite3")


def test_keys_create_list_revoke(env_and_state):
    env, state = env_and_state
    workspace = unique("cli")
    created = flokit("keys", "create", workspace, env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n" and key.startswith("fk_")  # alone on stdout, for scripts
    assert state.authenticate(key).name == workspace

    listing = flokit("keys", "list", env=env)
    key_id = key.split("_")[1]
    line = next(ln for ln in listing.stdout.splitlines() if workspace in ln)
    assert f"fk_{key_id}_…" in line and "active" in line
    assert key.split("_", 2)[2] not in listing.stdout  # the secret is never shown

    revoked = flokit("keys", "revoke", f"fk_{key_id}_…", env=env)
    assert revoked.returncode == 0 and state.authenticate(key) is None
    assert "revoked" in next(
        ln for ln in flokit("keys", "list", env=env).stdout.splitlines() if workspace in ln
    )
    missing = flokit("keys", "revoke", "ffffffffffff", env=env)
    assert missing.returncode == 1 and "no key" in missing.stderr


def test_workspace_settings(env_and_state):
    env, state = env_and_state
    workspace = unique("cli")
    out = flokit("workspace", workspace, "--rate-limit", "500", "--events", "strict", env=env)
    assert out.returncode == 0 and f"{workspace}: rate limit 500/min, events strict" in out.stdout
    key = state.create_key(workspace)
    assert state.authenticate(key).rate_limit_per_minute == 500
    assert flokit("workspace", workspace, "--rate-limit", "0", env=env).returncode == 2


def test_kafka_init_creates_topics(kafka_bootstrap):
    topic = unique("init")
    env = {
        "FLOKIT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FLOKIT_TOPIC": topic,
        "FLOKIT_DLQ_TOPIC": topic + ".dlq",
    }
    out = flokit("kafka", "init", "--partitions", "3", env=env)
    assert out.returncode == 0 and f"{topic}: created" in out.stdout
    assert f"{topic}: exists" in flokit("kafka", "init", env=env).stdout
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        [meta] = admin.describe_topics([topic])
        assert len(meta["partitions"]) == 3
        assert topic + ".dlq" in admin.list_topics()
    finally:
        admin.close()


def test_queue_forget_group_lets_the_local_log_shrink(tmp_path):
    env = {"FLOKIT_DATA_DIR": str(tmp_path)}
    path = tmp_path / "queue.sqlite3"
    LocalLogPublisher(path, 1, 5).publish([Record(0, b"x%d" % i) for i in range(10)], 5)
    LocalLogSubscriber(path, "retired").close()  # a group that subscribed once, then was never used again
    live = LocalLogSubscriber(path, "consumers", prune_interval=0)
    assert len(live.poll(100, 1)) == 10
    live.commit({0: 10})

    def records():
        return sqlite3.connect(path).execute("SELECT count(*) FROM log").fetchone()[0]

    assert records() == 10  # "retired" holds every record back

    busy = flokit("queue", "forget-group", "consumers", env=env)
    assert busy.returncode == 1 and "right now" in busy.stderr  # a group being consumed is not dropped
    forgot = flokit("queue", "forget-group", "retired", env=env)
    assert forgot.returncode == 0 and "forgot consumer group retired" in forgot.stdout
    live.commit({0: 10})
    assert records() == 0
    live.close()
    again = flokit("queue", "forget-group", "retired", env=env)
    assert again.returncode == 1 and "no consumer group" in again.stderr
    kafka = flokit("queue", "forget-group", "retired", env={**env, "FLOKIT_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert kafka.returncode == 2


@pytest.mark.parametrize(
    "command",
    [
        ("keys", "create", "acme"),
        ("keys", "list"),
        ("keys", "revoke", "fk_x"),
        ("workspace",),
        ("workspace", "acme", "--rate-limit", "5"),
    ],
)
def test_a_state_store_that_does_not_answer_is_a_clear_message_not_a_traceback(tmp_path, command):
    from .services import free_port

    port = free_port()  # Redis down, for real: nothing listens there
    out = flokit(
        *command, env={"FLOKIT_DATA_DIR": str(tmp_path), "FLOKIT_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("flokit: the front door's state store (FLOKIT_REDIS_URL) did not answer")
    assert f"127.0.0.1:{port}" in out.stderr and out.stdout == ""
