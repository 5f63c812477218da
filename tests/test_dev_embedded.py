"""`flokit dev`, the embedded pipeline (no Kafka, no Redis, no ClickHouse
server), used the way the README says: a newcomer's smoke test in a fresh
virtual environment, kill -9 of the whole tree under load, concurrent
appends from several gunicorn workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import venv

import orjson
import requests

from .dev_process import DevProcess
from .services import ROOT, wait_until
from .test_api_reference import BATCH, SINGLE


def readme_commands() -> tuple[str, str]:
    """The run and test commands: the first two lines of the README's first code block."""
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    run, test = (line.split("  #")[0].strip() for line in block.strip().splitlines()[:2])
    return run, test


def sql(env: dict[str, str], query: str, *, flokit: str = "flokit", fmt: str = "json") -> list[dict]:
    out = subprocess.run(
        [flokit, "sql", "--format", fmt, query], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout) if fmt == "json" else out.stdout


def test_newcomer_smoke(tmp_path):
    """A fresh venv, the README's run command, the reference's curl examples, then `flokit sql`."""
    run, test = readme_commands()
    assert "flokit dev" in run and "pytest" in test
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "FLOKIT_DATA_DIR": str(tmp_path / "data"),
    }
    # The README's command, from the checkout, with the venv first on PATH.
    dev = DevProcess(["bash", "-c", run], cwd=ROOT, env=env)
    try:
        key = dev.wait_ready(timeout=600)
        assert "curl -X POST" in "".join(dev.output)
        env["FLOKIT_API_KEY"] = key
        for example in (SINGLE, BATCH):
            command = (
                example.replace("https://api.flokit.ai", dev.url) + " --silent --show-error --fail-with-body"
            )
            out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and orjson.loads(out.stdout)["status"] == "ok", out.stdout + out.stderr
        # Linking: a pre-login event, then the event that carries both ids. Dedupe: a retried request.
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Idempotency-Key": "smoke-1",
        }
        anon = {"event": "paywall_viewed", "anonymous_id": "dev_smoke", "timestamp": "2024-03-15T14:00:00Z"}
        link = {
            "event": "trial_started",
            "anonymous_id": "dev_smoke",
            "user_id": "usr_abc123",
            "timestamp": "2024-03-15T14:05:00Z",
        }
        first = requests.post(dev.url + "/v1/events", data=orjson.dumps(anon), headers=headers, timeout=30)
        retry = requests.post(dev.url + "/v1/events", data=orjson.dumps(anon), headers=headers, timeout=30)
        assert first.json() == retry.json() and retry.headers["Idempotent-Replayed"] == "true"
        assert (
            requests.post(
                dev.url + "/v1/events",
                data=orjson.dumps(link),
                headers={**headers, "Idempotency-Key": "smoke-2"},
                timeout=30,
            ).status_code
            == 200
        )
        sql_env = {**env, "FLOKIT_CLICKHOUSE_URL": f"http://127.0.0.1:{dev.warehouse_port}"}
        flokit = str(env_dir / "bin" / "flokit")
        rows = wait_until(
            lambda: (lambda r: r if len(r) == 5 else None)(
                sql(
                    sql_env,
                    "SELECT event, user_id, anonymous_id, resolved_user_id FROM events_resolved"
                    " ORDER BY timestamp, event",
                    flokit=flokit,
                )
            ),
            timeout=60,
            message="5 rows",
        )
        assert [(r["event"], r["anonymous_id"], r["resolved_user_id"]) for r in rows] == [
            ("paywall_viewed", "dev_smoke", "usr_abc123"),  # 14:00, anonymous, resolved through the link
            ("trial_started", "dev_smoke", "usr_abc123"),  # 14:05, the link
            ("paywall_viewed", None, "usr_abc123"),  # 14:20, the batch example
            ("paywall_viewed", None, "usr_abc123"),  # 14:22, the single example
            ("trial_started", None, "usr_abc123"),
        ]  # 14:22, the batch example
        table = sql(sql_env, "SELECT count() AS n FROM events_resolved", flokit=flokit, fmt="table")
        assert "5" in table
    finally:
        code = dev.interrupt()
    assert code == 0, "".join(dev.output)
    assert "stopping" in "".join(dev.output)


def post_batches(url: str, key: str, batches: int, size: int, threads: int) -> list[str]:
    """Concurrent 1..size-event batches; returns every event id that got a 200."""
    accepted, lock = [], threading.Lock()

    def worker(t: int):
        for b in range(batches):
            events = [
                {
                    "event": "paywall_viewed",
                    "anonymous_id": f"dev_{t}_{i % 17}",
                    "timestamp": "2024-03-15T14:00:00Z",
                    "properties": {"t": t, "b": b, "i": i},
                }
                for i in range(size)
            ]
            try:
                resp = requests.post(
                    url + "/v1/batch/events",
                    data=orjson.dumps({"events": events}),
                    headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                    timeout=30,
                )
            except requests.RequestException:
                return  # the server died under us: this batch was not acknowledged
            assert resp.status_code in (200, 503), resp.text  # 503: the queue could not take it in time
            if resp.status_code == 200:
                with lock:
                    accepted.extend(resp.json()["event_ids"])

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    [t.start() for t in pool]
    return pool, accepted


def test_kill_9_under_load_then_restart_loses_and_duplicates_nothing(tmp_path):
    env = {
        **os.environ,
        "FLOKIT_DATA_DIR": str(tmp_path / "data"),
        "FLOKIT_API_WORKERS": "3",
        "FLOKIT_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    for name in ("FLOKIT_KAFKA_BOOTSTRAP", "FLOKIT_REDIS_URL", "FLOKIT_CLICKHOUSE_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "deploy.cli", "dev"]
    dev = DevProcess(command, cwd=ROOT, env=env)
    key = dev.wait_ready()
    # Several workers appending at once, then kill -9 of everything while batches are in flight.
    pool, accepted = post_batches(dev.url, key, batches=40, size=100, threads=8)
    wait_until(lambda: len(accepted) >= 5_000, timeout=120, interval=0.05, message="load under way")
    dev.kill_tree()
    [t.join() for t in pool]
    assert 5_000 <= len(accepted) < 32_000, "the kill did not land in the middle of the load"

    again = DevProcess(command, cwd=ROOT, env=env)
    again.wait_ready()
    try:
        # And after the restart, more concurrent load, run to completion.
        pool, more = post_batches(again.url, key, batches=10, size=100, threads=6)
        [t.join() for t in pool]
        assert len(more) == 6_000
        sql_env = {**env, "FLOKIT_CLICKHOUSE_URL": f"http://127.0.0.1:{again.warehouse_port}"}
        expected = set(accepted) | set(more)
        query = "SELECT count() AS rows, uniqExact(event_id) AS ids FROM events_resolved"
        wait_until(
            lambda: int(sql(sql_env, query)[0]["ids"]) >= len(expected), timeout=120, message="all rows"
        )
        counts = {
            r["event_id"]: int(r["n"])
            for r in sql(sql_env, "SELECT event_id, count() AS n FROM events_resolved GROUP BY event_id")
        }
    finally:
        assert again.interrupt() == 0, "".join(again.output)
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} acknowledged events are missing"
    assert set(counts.values()) == {1}, "an event is counted twice"


def test_the_same_command_on_kafka_and_redis(tmp_path, kafka_bootstrap, redis_url):
    """Switching to production services is configuration only."""
    from .services import unique

    topic = unique("dev")
    env = {
        **os.environ,
        "FLOKIT_DATA_DIR": str(tmp_path / "data"),
        "FLOKIT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FLOKIT_REDIS_URL": redis_url,
        "FLOKIT_TOPIC": topic,
        "FLOKIT_DLQ_TOPIC": topic + ".dlq",
        "FLOKIT_CONSUMER_GROUP": unique("group"),
    }
    dev = DevProcess([sys.executable, "-m", "deploy.cli", "dev"], cwd=ROOT, env=env)
    key = dev.wait_ready()
    try:
        resp = requests.post(
            dev.url + "/v1/events",
            data=orjson.dumps(
                {"event": "trial_started", "user_id": "usr_prod", "timestamp": "2024-03-15T14:00:00Z"}
            ),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert resp.status_code == 200
        sql_env = {**env, "FLOKIT_CLICKHOUSE_URL": f"http://127.0.0.1:{dev.warehouse_port}"}
        rows = wait_until(
            lambda: sql(sql_env, "SELECT event_id, user_id FROM events_resolved"), message="the row"
        )
        assert rows == [{"event_id": resp.json()["event_id"], "user_id": "usr_prod"}]
        # The key lives in Redis and the events went through the Kafka topic.
        from ingest_api.state.redis_state import RedisState

        from .services import read_events

        assert RedisState(redis_url).authenticate(key).name == "dev"
        assert [e["event_id"] for e in read_events(kafka_bootstrap, topic)] == [resp.json()["event_id"]]
        assert not (tmp_path / "data" / "queue.sqlite3").exists()
    finally:
        assert dev.interrupt() == 0, "".join(dev.output)
