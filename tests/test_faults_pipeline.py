"""The pipeline under faults, each scenario under load and ending in the same count (tests/faults.py): every
event that got a 200 is in events_deduped once, and nothing else is there.

On the production stack (Kafka, Redis, the embedded warehouse): a. the warehouse killed for 60 s, b. consumers
SIGKILLed again and again, c. the front door SIGTERMed, e. the Kafka broker stopped then frozen, f. Redis
stopped then frozen. On the embedded queue: d. its disk full. One warehouse serves them all (a database each).
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from contextlib import contextmanager

import pytest

from deploy.clickhouse import connect
from deploy.queue.kafka_queue import create_topics
from deploy.settings import Settings
from ingest_api.state.redis_state import RedisState
from schemas.migrations import apply_migrations

from .dev_process import descendants
from .faults import (
    LoadGenerator,
    count_in_warehouse,
    fill,
    first_200_after,
    frozen,
    in_window,
    service_pid,
    tmpfs,
)
from .services import (
    ApiServer,
    ConsumerProcess,
    cpu_seconds,
    group_lag,
    read_events,
    run_script,
    unique,
    wait_until,
)
from .warehouse_process import Warehouse


@pytest.fixture(scope="module")
def shared_warehouse(tmp_path_factory):
    """One warehouse for the module's scenarios (each has its own database); scenario a kills it."""
    wh = Warehouse(tmp_path_factory.mktemp("warehouse"))
    yield wh
    wh.stop()


def pipeline_env(tmp_path, warehouse_url: str, redis_url: str, kafka_bootstrap: str | None) -> dict[str, str]:
    """A fresh topic (or the embedded log under tmp_path), database, consumer group and workspace limit."""
    env = {
        "FLOKIT_DATA_DIR": str(tmp_path),
        "FLOKIT_REDIS_URL": redis_url,
        "FLOKIT_CLICKHOUSE_URL": warehouse_url,
        "FLOKIT_CLICKHOUSE_DATABASE": unique("faults").replace("-", "_"),
        "FLOKIT_CONSUMER_GROUP": unique("group"),
        "FLOKIT_BATCH_MAX_SECONDS": "0.5",
        "FLOKIT_ENQUEUE_TIMEOUT_SECONDS": "5",
        "FLOKIT_RATE_LIMIT_PER_MINUTE": "1000000",
        "FLOKIT_KAFKA_BOOTSTRAP": "",
    }
    if kafka_bootstrap:
        topic = unique("faults")
        create_topics(kafka_bootstrap, {topic: 4, topic + ".dlq": 4})
        env.update(
            {
                "FLOKIT_KAFKA_BOOTSTRAP": kafka_bootstrap,
                "FLOKIT_TOPIC": topic,
                "FLOKIT_DLQ_TOPIC": topic + ".dlq",
            }
        )
    settings = Settings.from_env(env)
    apply_migrations(connect(settings), settings.clickhouse_database)
    return env


@pytest.fixture
def production(tmp_path, shared_warehouse, kafka_bootstrap, redis_url):
    """(env, settings, warehouse client, workspace, API key) of a pipeline on Kafka and Redis."""
    env = pipeline_env(tmp_path, shared_warehouse.url, redis_url, kafka_bootstrap)
    settings = Settings.from_env(env)
    workspace = unique("ws")
    return env, settings, connect(settings), workspace, RedisState(redis_url).create_key(workspace)


@contextmanager
def consumer_running(env: dict[str, str], log_path):
    """A consumer for the block, stopped at its end whatever happens (its stop() then returns its exit)."""
    consumer = ConsumerProcess(env, log_path=log_path)
    try:
        yield consumer
    finally:
        consumer.stop()


def rows_of(client, settings: Settings, workspace: str) -> int:
    return client.query(
        f"SELECT count() FROM `{settings.clickhouse_database}`.events WHERE workspace = {{ws:String}}",
        parameters={"ws": workspace},
    ).result_rows[0][0]


def test_a_warehouse_killed_for_60_seconds_under_load(production, shared_warehouse, tmp_path):
    env, settings, client, workspace, key = production

    def lag():
        return group_lag(settings.kafka_bootstrap, settings.topic, settings.consumer_group)

    with consumer_running(env, tmp_path / "consumer.log") as consumer:
        server = ApiServer(env).start()
        load = LoadGenerator(server.url, key).start()
        try:
            load.wait_for_acknowledged(1_000)
            wait_until(lambda: rows_of(client, settings, workspace) > 0, message="the consumer writing")
            lag_before = lag()
            shared_warehouse.kill()
            cpu_before, down_at = cpu_seconds(consumer.proc.pid), time.monotonic()
            time.sleep(60)
            cpu_while_down = cpu_seconds(consumer.proc.pid) - cpu_before
            lag_down = lag()
            log_while_down = consumer.output()
            shared_warehouse.start_again()
            back_at = time.monotonic()
            # Caught up: the lag back to what it was under the same load before the outage.
            wait_until(lambda: lag() <= max(lag_before, 50), timeout=90, interval=1, message="caught up")
            caught_up_after = time.monotonic() - back_at
        finally:
            load.stop()
            server.stop()
        assert consumer.proc.poll() is None, f"the consumer died: {consumer.output()[-3000:]}"
        tally = count_in_warehouse(client, settings.clickhouse_database, workspace, load)
    code, out = consumer.stop()
    print(
        f"lag {lag_before} → {lag_down} records after {back_at - down_at:.0f} s down, caught up in "
        f"{caught_up_after:.1f} s; consumer CPU while down {cpu_while_down:.1f} s; {load.summary()}; {tally}"
    )
    assert lag_down > lag_before + 100, "the lag did not grow while the warehouse was down"
    assert code == 0, out[-3000:]  # it never crashed, and stopped cleanly at the end
    retries = log_while_down.count("flush failed")
    assert 2 <= retries <= 40, f"{retries} failed flushes in 60 s: no backoff, or no retry"
    assert cpu_while_down < 15, f"the consumer used {cpu_while_down:.1f} s of CPU in 60 s waiting: it spins"
    assert set(load.statuses()) == {200}, load.summary()  # the front door never noticed
    tally.assert_exact()


MEMBERS, CYCLES = 2, 5  # 10 kills


def test_b_consumers_sigkilled_at_10_random_moments_under_load(production, tmp_path):
    """Two consumers of the group, each killed while it works, five times over. Both die in a cycle before
    they are started again: a new member would start a rebalance and stop the other one's work, and a killed
    member's partitions stay where they are until its session times out (10 s) anyway."""
    env, settings, client, workspace, key = production
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    moments, consumers = [], []
    try:
        server = ApiServer(env).start()
        load = LoadGenerator(server.url, key).start()
        try:
            for cycle in range(CYCLES):
                consumers = [
                    ConsumerProcess(env, log_path=tmp_path / f"consumer-{cycle}-{m}.log")
                    for m in range(MEMBERS)
                ]
                wait_until(
                    lambda consumers=consumers: all(
                        re.search(r"assigned partitions \[\d", c.output()) for c in consumers
                    ),
                    timeout=60,
                    interval=0.2,
                    message=f"cycle {cycle}: partitions assigned to every member",
                )
                written = rows_of(client, settings, workspace)
                wait_until(
                    lambda written=written: rows_of(client, settings, workspace) > written,
                    timeout=60,
                    interval=0.2,
                    message=f"cycle {cycle}: the consumers writing",
                )
                for consumer in rng.sample(
                    consumers, MEMBERS
                ):  # each after a random delay, the others working
                    moments.append(rng.uniform(0, 1.5))
                    time.sleep(moments[-1])
                    consumer.signal(signal.SIGKILL)
                    assert consumer.wait(10)[0] == -signal.SIGKILL
            consumers = [ConsumerProcess(env, log_path=tmp_path / "consumer-last.log")]
            load.wait_for_acknowledged(load.acknowledged_events() + 500)
        finally:
            load.stop()
            server.stop()
        tally = count_in_warehouse(client, settings.clickhouse_database, workspace, load)
    finally:
        results = [c.stop() for c in consumers]
    print(
        f"seed {seed}; {len(moments)} kills, each "
        f"{', '.join(f'{m:.2f}' for m in moments)} s after the previous "
        f"one (the first of a cycle: after a write); {load.summary()}; {tally}"
    )
    assert results[0][0] == 0, results[0][1][-3000:]
    assert set(load.statuses()) == {200}, load.summary()
    tally.assert_exact()


def test_c_front_door_sigterm_under_load(production, tmp_path):
    env, settings, client, workspace, key = production
    with consumer_running(env, tmp_path / "consumer.log"):
        server = ApiServer(env).start()
        load = LoadGenerator(server.url, key, threads=4).start()
        replacement = None
        try:
            load.wait_for_acknowledged(1_000)
            stopped_at = time.monotonic()
            os.kill(server.proc.pid, signal.SIGTERM)  # gunicorn's master: a graceful stop
            server.proc.wait(60)
            stop_seconds = time.monotonic() - stopped_at
            out = server.stop()
            # A new front door on the same port: the retries of what the old one did not answer go there.
            replacement = ApiServer(env, port=server.port).start()
            load.wait_for_acknowledged(load.acknowledged_events() + 500)
        finally:
            load.stop()
            server.stop()
            if replacement:
                replacement.stop()
        tally = count_in_warehouse(client, settings.clickhouse_database, workspace, load)
    print(f"the old front door took {stop_seconds:.1f} s to stop; {load.summary()}; {tally}")
    assert "Traceback" not in out, out[-3000:]
    # Stopping takes the longest request (the enqueue timeout) and an idle keep-alive connection's wait;
    # gunicorn's graceful_timeout (30 s) is when it kills its workers, and their requests in flight.
    assert stop_seconds < 20, f"the front door took {stop_seconds:.0f} s to stop: its workers were killed"
    # An answer lost in flight: a request the old front door had taken (a retry is a replay, or finds it
    # still in progress) that got no answer. A connection refused or reset before the front door read the
    # request is not one: its retry is served afresh.
    lost_in_flight = [
        (r.key, [(a.status, a.error, a.replayed) for a in r.answers])
        for r in load.requests
        if any(a.status is None for a in r.answers) and any(a.replayed or a.status == 409 for a in r.answers)
    ]
    assert not lost_in_flight, f"{len(lost_in_flight)} requests taken but not answered: {lost_in_flight[:5]}"
    assert set(load.statuses()) <= {200, "refused", "reset"}, load.summary()
    in_kafka = {e["event_id"] for e in read_events(settings.kafka_bootstrap, settings.topic)}
    acked = {i for r in load.requests if r.event_ids for i in r.event_ids}
    assert acked <= in_kafka, f"{len(acked - in_kafka)} acknowledged events are not in Kafka"
    tally.assert_exact()


# --- the embedded queue ------------------------------------------------------


def integrity(path) -> str:
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def test_d_local_log_disk_full(tmp_path, shared_warehouse, redis_url):
    """The embedded queue's data dir on a small tmpfs, filled. The front-door state is in Redis here, so the
    full disk hits the queue alone (with SQLite state on the same disk, the state would fail first)."""
    with tmpfs(tmp_path / "data", "16m") as data:
        env = pipeline_env(data, shared_warehouse.url, redis_url, kafka_bootstrap=None)
        settings = Settings.from_env(env)
        client = connect(settings)
        workspace = unique("ws")
        key = RedisState(redis_url).create_key(workspace)
        timeout = settings.enqueue_timeout_seconds
        with consumer_running(env, tmp_path / "consumer.log") as consumer:
            server = ApiServer(env).start()
            load = LoadGenerator(server.url, key).start()
            try:
                load.wait_for_acknowledged(1_000)
                filled = fill(data)
                full_at = time.monotonic()
                wait_until(
                    lambda: [a for a in load.answers() if a.sent_at > full_at and a.status == 503],
                    timeout=60,
                    message="a 503 on the full disk",
                )
                time.sleep(3)  # more answers on the full disk
                assert integrity(data / "queue.sqlite3") == "ok"
                (data / "filler").unlink()
                freed_at = time.monotonic()
                wait_until(
                    lambda: [a for a in load.answers() if a.sent_at > freed_at and a.status == 200],
                    timeout=30,
                    message="a 200 once space is freed",
                )
                load.wait_for_acknowledged(load.acknowledged_events() + 500)
            finally:
                load.stop()
                server.stop()
            assert consumer.proc.poll() is None, f"the consumer died: {consumer.output()[-3000:]}"
            tally = count_in_warehouse(client, settings.clickhouse_database, workspace, load)
        code, out = consumer.stop()
        assert integrity(data / "queue.sqlite3") == "ok"
    while_full = [a for a in load.answers() if full_at < a.sent_at < freed_at]
    print(
        f"filled {filled} bytes; while full: {len(while_full)} answers "
        f"{sorted({(a.status, a.error) for a in while_full}, key=str)}; {load.summary()}; {tally}"
    )
    assert code == 0, out[-3000:]  # a commit the full disk refused was retried, not a crash
    assert {a.status for a in load.answers()} <= {200, 503}, load.summary()
    full_503 = [a for a in while_full if a.status == 503]
    assert all(a.error == "queue_unavailable" and a.retry_after for a in full_503), full_503[:3]
    slowest = max(a.latency for a in load.answers())
    assert slowest <= timeout + 1, f"an answer took {slowest:.1f} s (the enqueue timeout is {timeout} s)"
    tally.assert_exact()


# --- Kafka and Redis stopped or frozen ------------------------------------------
#
# The suite shares one broker and one Redis: each is given back (started, SIGCONT) in a `finally`.

OUTAGE_SECONDS = 30
RECOVERY_SECONDS = 15  # from the service's return to the front door's first 200 again, without a restart


def assert_unavailable_then_healed(
    load: LoadGenerator, name: str, away: tuple[float, float], back: float, code: str
) -> None:
    """Every answer to a request sent and answered while the service was `away` (from, to) is a 503 `code`
    with Retry-After (never a 200), and the front door serves 200s again within RECOVERY_SECONDS of its
    return, `back` (a restarted service is back once its script found it ready)."""
    answers = load.answers()
    window = in_window(answers, *away)
    assert len(window) >= 5, f"{name}: only {len(window)} answers while the service was away"
    wrong = [a for a in window if (a.status, a.error) != (503, code) or not a.retry_after]
    assert not wrong, f"{name}: {len(wrong)} answers that are not a 503 {code} with Retry-After: {wrong[:3]}"
    healed = first_200_after(answers, back)
    assert healed is not None and healed <= RECOVERY_SECONDS, f"{name}: first 200 {healed} s after the return"


def wait_for_200_after(load: LoadGenerator, moment: float, what: str) -> None:
    try:
        wait_until(
            lambda: first_200_after(load.answers(), moment) is not None,
            timeout=RECOVERY_SECONDS + 30,
            interval=0.2,
        )
    except AssertionError:
        raise AssertionError(f"no 200 within {RECOVERY_SECONDS + 30} s of {what}: {load.summary()}") from None


def stopped_then_frozen(
    production, tmp_path, script: str, port: str, outage: float, code: str, **load_options
):
    """Under load: the service of `script` (kafka.sh or redis.sh) on `port` stopped for `outage` seconds and
    started again, then frozen (SIGSTOP) as long and thawed. Every answer while it was away is a 503 `code`,
    the front door serves again soon after each return without a worker restart, no answer is slower than
    the enqueue timeout + 1 s, and the warehouse holds every acknowledged event exactly once."""
    env, settings, client, workspace, key = production
    port_variable = "KAFKA_PORT" if script == "kafka.sh" else "REDIS_PORT"
    with consumer_running(env, tmp_path / "consumer.log") as consumer:
        server = ApiServer(env).start()
        workers = sorted(descendants(server.proc.pid))
        load = LoadGenerator(server.url, key, **load_options).start()
        try:
            load.wait_for_acknowledged(1_000)
            try:
                run_script(script, "stop", **{port_variable: port})
                stopped_at = time.monotonic()
                time.sleep(outage)
            finally:
                started_at = time.monotonic()
                run_script(script, "start", **{port_variable: port})  # Redis: from its append-only file
            back_at = time.monotonic()
            wait_for_200_after(load, back_at, f"{script}'s restart")
            with frozen(service_pid(script, port)):
                frozen_at = time.monotonic()
                time.sleep(outage)
                thawed_at = time.monotonic()
            wait_for_200_after(load, thawed_at, f"{script}'s thaw")
            load.wait_for_acknowledged(load.acknowledged_events() + 500)
            workers_after = sorted(descendants(server.proc.pid))
        finally:
            load.stop()
            out = server.stop()
        assert workers_after == workers, f"front-door workers restarted: {out[-3000:]}"  # it healed by itself
        assert consumer.proc.poll() is None, f"the consumer died: {consumer.output()[-3000:]}"
        tally = count_in_warehouse(client, settings.clickhouse_database, workspace, load)
    exit_code, consumer_out = consumer.stop()
    answers = load.answers()
    print(
        f"{script} restart took {back_at - started_at:.1f} s; first 200 {first_200_after(answers, back_at)} s"
        f" after it was back, {first_200_after(answers, thawed_at)} s after the thaw; slowest answer "
        f"{max(a.latency for a in answers):.1f} s; {load.summary()}; {tally}"
    )
    assert_unavailable_then_healed(load, "stopped", (stopped_at, started_at), back_at, code)
    assert_unavailable_then_healed(load, "frozen", (frozen_at, thawed_at), thawed_at, code)
    slow = [a for a in answers if a.latency > settings.enqueue_timeout_seconds + 1]
    assert not slow, f"{len(slow)} answers slower than the enqueue timeout + 1 s: {slow[:3]}"
    assert set(load.statuses()) <= {200, 503}, load.summary()
    assert exit_code == 0, consumer_out[-3000:]
    tally.assert_exact()


def test_e_kafka_broker_stopped_then_frozen_for_30_seconds_under_batch_load(production, tmp_path):
    port = production[1].kafka_bootstrap.rsplit(":", 1)[1]
    stopped_then_frozen(
        production, tmp_path, "kafka.sh", port, OUTAGE_SECONDS, "queue_unavailable", threads=6, single_every=0
    )


REDIS_OUTAGE_SECONDS = 15


def test_f_redis_stopped_then_frozen_under_load(production, tmp_path, redis_url):
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    stopped_then_frozen(
        production, tmp_path, "redis.sh", port, REDIS_OUTAGE_SECONDS, "state_unavailable", threads=6
    )
