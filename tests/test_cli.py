"""`flokit keys`, `flokit workspace` and `flokit kafka init` as an operator runs them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kafka.admin import KafkaAdminClient

from ingest_api.state.redis_state import RedisState
from ingest_api.state.sqlite_state import SqliteState

from .services import unique


def flokit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


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
    line = next(l for l in listing.stdout.splitlines() if workspace in l)
    assert f"fk_{key_id}_…" in line and "active" in line
    assert key.split("_", 2)[2] not in listing.stdout  # the secret is never shown

    revoked = flokit("keys", "revoke", f"fk_{key_id}_…", env=env)
    assert revoked.returncode == 0 and state.authenticate(key) is None
    assert "revoked" in next(l for l in flokit("keys", "list", env=env).stdout.splitlines() if workspace in l)
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
    env = {"FLOKIT_KAFKA_BOOTSTRAP": kafka_bootstrap, "FLOKIT_TOPIC": topic, "FLOKIT_DLQ_TOPIC": topic + ".dlq"}
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
