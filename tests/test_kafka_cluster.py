"""The pipeline on a 3-node Kafka cluster (deploy/kafka-cluster.sh: KRaft, ports of its own) under faults.

Topics have replication factor 3 and min.insync.replicas=2 (FLOKIT_KAFKA_MIN_INSYNC_REPLICAS), the front door
publishes with acks=all: a 200 means two brokers hold the events. Each scenario ends in the count of
tests/faults.py: every acknowledged event in events_deduped once, nothing else there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

from deploy.clickhouse import connect
from deploy.queue.kafka_queue import create_topics
from deploy.settings import Settings
from ingest_api.state.redis_state import RedisState
from schemas.migrations import apply_migrations

from .faults import LoadGenerator, count_in_warehouse
from .services import ROOT, ApiServer, ConsumerProcess, unique, wait_until
from .warehouse_process import Warehouse

SCRIPT = str(ROOT / "deploy" / "kafka-cluster.sh")
PARTITIONS = 6


def cluster(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [SCRIPT, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"kafka-cluster.sh {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory):
    """(bootstrap, the script's environment): three fresh nodes, stopped at the module's end."""
    env = {"KAFKA_CLUSTER_DIR": str(tmp_path_factory.mktemp("kafka-cluster") / "node")}
    try:
        cluster("start", env=env)
        yield cluster("bootstrap", env=env), env
    finally:
        cluster("stop", env=env)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    wh = Warehouse(tmp_path_factory.mktemp("warehouse"))
    yield wh
    wh.stop()


@pytest.fixture
def pipeline(kafka_cluster, warehouse, redis_url, tmp_path):
    """(env, settings, warehouse client, workspace, API key) on a fresh topic, every node up."""
    bootstrap, script_env = kafka_cluster
    for node in (1, 2, 3):
        cluster("start-node", str(node), env=script_env)  # a no-op for a running node
    topic = unique("cluster")
    env = {
        "FLOKIT_DATA_DIR": str(tmp_path),
        "FLOKIT_KAFKA_BOOTSTRAP": bootstrap,
        "FLOKIT_TOPIC": topic,
        "FLOKIT_DLQ_TOPIC": topic + ".dlq",
        "FLOKIT_REPLICATION_FACTOR": "3",
        "FLOKIT_KAFKA_MIN_INSYNC_REPLICAS": "2",
        "FLOKIT_REDIS_URL": redis_url,
        "FLOKIT_CLICKHOUSE_URL": warehouse.url,
        "FLOKIT_CLICKHOUSE_DATABASE": unique("cluster").replace("-", "_"),
        "FLOKIT_CONSUMER_GROUP": unique("group"),
        "FLOKIT_BATCH_MAX_SECONDS": "0.5",
        "FLOKIT_ENQUEUE_TIMEOUT_SECONDS": "5",
        "FLOKIT_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    settings = Settings.from_env(env)
    create_topics(bootstrap, {topic: PARTITIONS, topic + ".dlq": PARTITIONS}, 3, min_insync_replicas=2)
    apply_migrations(connect(settings), settings.clickhouse_database)
    workspace = unique("ws")
    return env, settings, connect(settings), workspace, RedisState(redis_url).create_key(workspace)


def partitions(bootstrap: str, topic: str) -> list[dict]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return admin.describe_topics([topic])[0]["partitions"]
    finally:
        admin.close()


def run_load_with_consumer(env, tmp_path, key, scenario):
    """The front door and a consumer under load around `scenario(load)`; returns the stopped load."""
    consumer = ConsumerProcess(env, log_path=tmp_path / "consumer.log")
    server = ApiServer(env).start()
    load = LoadGenerator(server.url, key, max_seconds=240, drain_seconds=60).start()
    try:
        load.wait_for_acknowledged(500)
        scenario(load)
    finally:
        load.stop()
        server.stop()
    return load, consumer


def test_flokit_kafka_init_creates_replicated_topics_with_min_insync_replicas(kafka_cluster):
    bootstrap, _ = kafka_cluster
    topic = unique("init")
    env = {
        **os.environ,
        "FLOKIT_KAFKA_BOOTSTRAP": bootstrap,
        "FLOKIT_TOPIC": topic,
        "FLOKIT_DLQ_TOPIC": topic + ".d",
        "FLOKIT_REPLICATION_FACTOR": "3",
        "FLOKIT_KAFKA_MIN_INSYNC_REPLICAS": "2",
    }
    done = subprocess.run(
        [sys.executable, "-m", "deploy.cli", "kafka", "init"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:

        def min_insync(name: str) -> str | None:
            configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])["topic"][name]
            return configs.get("min.insync.replicas", {}).get("value")

        for name in (topic, topic + ".d"):
            # The broker asked may not have the new topic's config yet: metadata reaches each in its time.
            wait_until(lambda name=name: min_insync(name) is not None, timeout=30, message=f"{name}'s config")
            assert min_insync(name) == "2"
            assert all(len(p["replica_nodes"]) == 3 for p in partitions(bootstrap, name))
    finally:
        admin.close()


def test_one_broker_sigkilled_under_load_then_restarted(pipeline, kafka_cluster, tmp_path):
    env, settings, client, workspace, key = pipeline
    bootstrap, script_env = kafka_cluster
    times = {}

    def scenario(load: LoadGenerator) -> None:
        # The node leading the most partitions of the events topic: its loss moves the most leaders.
        victim = Counter(p["leader_id"] for p in partitions(bootstrap, settings.topic)).most_common(1)[0][0]
        cluster("kill", str(victim), env=script_env)
        times["killed"] = time.monotonic()
        acked_at_kill = load.acknowledged_events()
        time.sleep(15)
        times["steady"] = time.monotonic()
        load.wait_for_acknowledged(acked_at_kill + 500, timeout=60)  # still taking events on two brokers
        cluster("start-node", str(victim), env=script_env)
        # It rejoins and catches up: back in every partition's in-sync replicas.
        wait_until(
            lambda: all(victim in p["isr_nodes"] for p in partitions(bootstrap, settings.topic)),
            timeout=90,
            interval=1,
            message=f"node {victim} back in sync",
        )
        load.wait_for_acknowledged(load.acknowledged_events() + 300, timeout=60)

    load, consumer = run_load_with_consumer(env, tmp_path, key, scenario)
    try:
        tally = count_in_warehouse(client, settings.clickhouse_database, workspace, load)
    finally:
        code, out = consumer.stop()
    print(f"{load.summary()}; {tally}")
    answers = load.answers()
    # A short burst of 503s while the killed node's partitions move, then only 200s on the two left.
    late = [a for a in answers if a.sent_at >= times["steady"] and a.status != 200]
    assert not late, (
        f"{len(late)} answers other than 200 15 s after the kill, e.g. {late[:3]}; {load.summary()}"
    )
    assert set(load.statuses()) <= {200, 503}, load.summary()
    assert code == 0, out[-3000:]  # the consumer went on through it, and stopped cleanly
    tally.assert_exact()


def test_two_of_three_brokers_down_only_503_then_recovery(pipeline, kafka_cluster, tmp_path):
    env, settings, client, workspace, key = pipeline
    bootstrap, script_env = kafka_cluster
    times = {}

    def scenario(load: LoadGenerator) -> None:
        cluster("kill", "2", env=script_env)
        cluster("kill", "3", env=script_env)
        times["down"] = time.monotonic()
        time.sleep(15)
        times["back"] = time.monotonic()
        cluster("start-node", "3", env=script_env)
        times["started"] = time.monotonic()
        load.wait_for_acknowledged(load.acknowledged_events() + 500, timeout=90)

    load, consumer = run_load_with_consumer(env, tmp_path, key, scenario)
    try:
        tally = count_in_warehouse(client, settings.clickhouse_database, workspace, load)
    finally:
        code, out = consumer.stop()
    print(f"{load.summary()}; {tally}")
    answers = load.answers()
    # Sent after both were gone (a second's margin for the kills to land) and before one came back: one
    # replica is left, fewer than min.insync.replicas, so nothing may be acknowledged. Each node is also a
    # controller, so the quorum is gone too and the in-sync sets cannot shrink: this alone would hold with
    # min.insync.replicas=1 as well (it was run so); the topic config itself is the init test's to check.
    while_down = [a for a in answers if times["down"] + 1 <= a.sent_at and a.answered_at <= times["back"]]
    assert while_down, "no request was answered while two brokers were down"
    assert {a.status for a in while_down} == {503}, Counter(a.status for a in while_down)
    assert any(a.status == 200 and a.sent_at >= times["started"] for a in answers)  # recovery
    assert code == 0, out[-3000:]
    tally.assert_exact()
