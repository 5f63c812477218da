"""The consumer on the embedded warehouse over HTTP, each test run on both
queues — real Kafka and the embedded local log — so they stay equivalent: end
to end through gunicorn, exactly once as analysts see it (duplicates, a
SIGKILL between insert and commit, a rebalance on Kafka), identity linking,
dead letters, ClickHouse down then up, SIGTERM."""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from deploy import clickhouse, components
from deploy.queue.kafka_queue import create_topics
from deploy.queue.local_log import LocalLogSubscriber
from deploy.settings import Settings
from schemas import envelope
from schemas.migrations import apply_migrations
from schemas.queue import Publisher, Record

from .services import ConsumerProcess, api_server, read_topic, unique, wait_until
from .warehouse_process import start_warehouse, stop_warehouse

T = "2024-03-15T14:{:02d}:00.000Z"


@pytest.fixture(scope="module")
def warehouse_url(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("warehouse")
    proc, url = start_warehouse(data_dir)
    yield url, data_dir
    stop_warehouse(proc)


@pytest.fixture(params=["kafka", "local"])
def queue_env(request, tmp_path) -> dict[str, str]:
    """The queue (and front-door state) part of the environment, for each backend."""
    env = {"FLOKIT_DATA_DIR": str(tmp_path), "FLOKIT_CONSUMER_GROUP": unique("group")}
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        topic = unique("e2e")
        create_topics(bootstrap, {topic: 4, topic + ".dlq": 4})
        env.update(
            {
                "FLOKIT_KAFKA_BOOTSTRAP": bootstrap,
                "FLOKIT_TOPIC": topic,
                "FLOKIT_DLQ_TOPIC": topic + ".dlq",
                "FLOKIT_REDIS_URL": request.getfixturevalue("redis_url"),
            }
        )
    return env


@pytest.fixture
def pipeline(queue_env, warehouse_url):
    """A fresh queue, database and consumer group: the environment every process of the test shares."""
    env = {
        **queue_env,
        "FLOKIT_CLICKHOUSE_URL": warehouse_url[0],
        "FLOKIT_CLICKHOUSE_DATABASE": unique("db").replace("-", "_"),
        "FLOKIT_BATCH_MAX_SECONDS": "0.5",
    }
    settings = Settings.from_env(env)
    client = clickhouse.connect(settings)
    apply_migrations(client, settings.clickhouse_database)
    publisher = components.make_publisher(settings)
    yield env, settings, client, publisher
    publisher.close()


def read_dead_letters(settings: Settings) -> list[dict]:
    if settings.embedded_queue:
        subscriber = LocalLogSubscriber(settings.data_dir / "dead_letters.sqlite3", unique("reader"))
        try:
            return [orjson.loads(m.value) for m in subscriber.poll(1000, timeout=1)]
        finally:
            subscriber.close()
    return [orjson.loads(v) for _, _, v in read_topic(settings.kafka_bootstrap, settings.dlq_topic, 1)]


def publish(publisher: Publisher, workspace: str, events: list[dict]) -> None:
    groups: dict[int, list[dict]] = {}
    for e in events:
        groups.setdefault(envelope.partition_for(envelope.partition_key(e), 4), []).append(e)
    publisher.publish(
        [
            Record(p, v)
            for p, evs in groups.items()
            for v in envelope.encode_records(workspace, "2024-03-15T15:00:00.000Z", evs)
        ],
        timeout=10,
    )


def ev(i: int, *, user=None, anon=None, name="paywall_viewed", **props) -> dict:
    return {
        "event_id": f"evt_{i:026d}",
        "event": name,
        "user_id": user,
        "anonymous_id": anon,
        "timestamp": T.format(i % 60),
        "properties": props,
    }


def count(client, database: str, sql: str) -> int:
    return client.query(sql.format(db=database)).result_rows[0][0]


def counts_by_id(client, database: str, table: str) -> dict[str, int]:
    return dict(
        client.query(f"SELECT event_id, count() FROM {database}.{table} GROUP BY event_id").result_rows
    )


def test_end_to_end_through_gunicorn(pipeline):
    env, settings, client, _ = pipeline
    workspace = unique("ws")
    key = components.make_state(settings).create_key(workspace)
    consumer = ConsumerProcess(env)
    try:
        with api_server(env) as server:
            resp = server.post(
                "/v1/batch/events",
                {
                    "events": [
                        {
                            "event": "paywall_viewed",
                            "anonymous_id": "dev_e2e",
                            "timestamp": "2024-03-15T14:20:00+01:00",
                            "properties": {
                                "paywall_id": "pw_annual_v3",
                                "offer_id": "offer_intro_50pct",
                                "plan_ids": ["plan_annual_usd", "plan_monthly_usd"],
                                "context": "onboarding_step_3",
                                "custom": {"nested": [1, 2]},
                            },
                        },
                        {
                            "event": "trial_started",
                            "user_id": "usr_e2e",
                            "anonymous_id": "dev_e2e",
                            "timestamp": "2024-03-15T14:22:00Z",
                            "properties": {
                                "plan_id": "plan_annual_usd",
                                "trial_length_days": 7,
                                "price": 59.99,
                                "currency": "USD",
                            },
                        },
                    ]
                },
                key=key,
            )
            assert resp.status_code == 200, resp.text
        ids = resp.json()["event_ids"]
        wait_until(
            lambda: (
                count(client, settings.clickhouse_database, "SELECT count() FROM {db}.events_resolved") == 2
            ),
            message="2 rows",
        )
    finally:
        consumer.stop()
    rows = client.query(
        f"SELECT event_id, workspace, event, user_id, anonymous_id, linked_user_id, timestamp, received_at,"
        f" properties, paywall_id, offer_id, plan_id, plan_ids, context, trial_length_days, price, currency,"
        f" resolved_user_id, person_id FROM {settings.clickhouse_database}.events_resolved ORDER BY timestamp"
    ).named_results()
    viewed, trial = list(rows)
    assert viewed["event_id"] == ids[0] and trial["event_id"] == ids[1]
    assert (viewed["workspace"], viewed["event"], viewed["user_id"], viewed["anonymous_id"]) == (
        workspace,
        "paywall_viewed",
        None,
        "dev_e2e",
    )
    assert viewed["timestamp"].isoformat().startswith("2024-03-15T13:20:00")
    assert orjson.loads(viewed["properties"]) == {
        "paywall_id": "pw_annual_v3",
        "offer_id": "offer_intro_50pct",
        "plan_ids": ["plan_annual_usd", "plan_monthly_usd"],
        "context": "onboarding_step_3",
        "custom": {"nested": [1, 2]},
    }
    assert (viewed["paywall_id"], viewed["offer_id"], viewed["plan_ids"], viewed["context"]) == (
        "pw_annual_v3",
        "offer_intro_50pct",
        ["plan_annual_usd", "plan_monthly_usd"],
        "onboarding_step_3",
    )
    # The pre-login view resolves to the user through the link the trial event made.
    assert (viewed["resolved_user_id"], viewed["person_id"]) == ("usr_e2e", "usr_e2e")
    assert (
        trial["user_id"],
        trial["plan_id"],
        trial["trial_length_days"],
        trial["price"],
        trial["currency"],
    ) == ("usr_e2e", "plan_annual_usd", 7, 59.99, "USD")
    assert trial["received_at"] >= trial["timestamp"]


def test_duplicates_are_counted_once(pipeline):
    env, settings, client, publisher = pipeline
    db = settings.clickhouse_database
    client.command(f"SYSTEM STOP MERGES {db}.events")
    events = [ev(i, user=f"usr_{i % 5}") for i in range(200)]
    publish(publisher, "ws_dup", events)
    consumer = ConsumerProcess(env)
    try:
        wait_until(lambda: count(client, db, "SELECT count() FROM {db}.events") >= 200, message="first copy")
        # The same events produced again (what a retry after a lost acknowledgement would do),
        # after the worker has written the first copy.
        publish(publisher, "ws_dup", events)
        publish(publisher, "ws_dup", [ev(1000 + i, user="usr_late") for i in range(10)])
        wait_until(
            lambda: count(client, db, "SELECT count() FROM {db}.events_resolved") == 210, message="210"
        )
    finally:
        consumer.stop()
    assert count(client, db, "SELECT uniqExact(event_id) FROM {db}.events_resolved") == 210
    assert count(client, db, "SELECT count() FROM {db}.events_deduped") == 210


def test_killed_between_insert_and_commit(pipeline):
    env, settings, client, publisher = pipeline
    db = settings.clickhouse_database
    client.command(f"SYSTEM STOP MERGES {db}.events")
    events = [ev(i, anon=f"dev_{i % 9}") for i in range(300)]
    publish(publisher, "ws_kill", events)
    crashing = ConsumerProcess(env, module="tests.crash_consumer", args=())
    code, out = crashing.wait(timeout=60)
    assert code == -signal.SIGKILL and "killing myself" in out
    inserted = count(client, db, "SELECT count() FROM {db}.events")
    assert inserted > 0  # the insert happened; the commit did not
    consumer = ConsumerProcess(env)
    try:
        publish(publisher, "ws_kill", [ev(5000, anon="dev_after")])
        wait_until(
            lambda: count(client, db, "SELECT count() FROM {db}.events_resolved") == 301, message="301 rows"
        )
    finally:
        consumer.stop()
    by_id = counts_by_id(client, db, "events_resolved")
    assert len(by_id) == 301 and set(by_id.values()) == {1}


# Kafka only: the embedded log has one consumer per group by design (tests/test_local_log.py).
@pytest.mark.parametrize("queue_env", ["kafka"], indirect=True)
def test_two_consumers_rebalancing_while_events_flow(pipeline):
    env, settings, client, publisher = pipeline
    db = settings.clickhouse_database
    first = ConsumerProcess(env)
    second = None
    try:
        for wave in range(12):
            publish(publisher, "ws_rebalance", [ev(wave * 100 + i, anon=f"dev_{i % 13}") for i in range(100)])
            if wave == 3:
                second = ConsumerProcess(env)  # join: partitions move to it
            if wave == 8:
                assert first.stop()[0] == 0  # leave: they move back
            time.sleep(0.3)
        wait_until(
            lambda: count(client, db, "SELECT count() FROM {db}.events_resolved") == 1200,
            timeout=90,
            message="1200 rows",
        )
    finally:
        first.stop()
        if second:
            second.stop()
    assert set(counts_by_id(client, db, "events_resolved").values()) == {1}


def test_identity_linking_and_conflict_policy(pipeline):
    env, settings, client, publisher = pipeline
    db = settings.clickhouse_database
    consumer = ConsumerProcess(env)
    try:
        # Pre-login events, then the linking event, then more anonymous-only events.
        publish(
            publisher,
            "ws_id",
            [ev(1, anon="dev_a", name="paywall_viewed"), ev(2, anon="dev_a", name="purchase_started")],
        )
        wait_until(lambda: count(client, db, "SELECT count() FROM {db}.events") == 2)
        publish(publisher, "ws_id", [ev(3, anon="dev_a", user="usr_first", name="trial_started")])
        wait_until(lambda: count(client, db, "SELECT count() FROM {db}.events") == 3)
        # Conflict: the same device later seen with another user; and one user with two devices.
        publish(
            publisher,
            "ws_id",
            [
                ev(4, anon="dev_a", name="paywall_viewed"),
                ev(5, anon="dev_a", user="usr_second", name="subscription_started"),
                ev(6, anon="dev_a", name="paywall_dismissed"),
                ev(7, anon="dev_b", user="usr_first", name="paywall_viewed"),
                ev(8, anon="dev_b", name="paywall_viewed"),
            ],
        )
        wait_until(lambda: count(client, db, "SELECT count() FROM {db}.events_resolved") == 8)
    finally:
        consumer.stop()
    rows = {
        r[0]: r[1:]
        for r in client.query(
            f"SELECT event_id, user_id, linked_user_id, resolved_user_id FROM {db}.events_resolved"
        ).result_rows
    }
    resolved = {int(k[4:]): v[2] for k, v in rows.items()}
    assert resolved == {
        1: "usr_first",
        2: "usr_first",
        3: "usr_first",
        4: "usr_first",
        5: "usr_second",
        6: "usr_first",
        7: "usr_first",
        8: "usr_first",
    }
    linked = {int(k[4:]): v[1] for k, v in rows.items()}
    # Stamped at ingest once the link was known; events before the link get it only through the view.
    assert linked[1] is None and linked[2] is None and linked[4] == "usr_first" and linked[6] == "usr_first"
    assert count(client, db, "SELECT count() FROM {db}.identity_resolved WHERE workspace = 'ws_id'") == 2


def test_many_batches_overlap_lookups_and_writes_cleanly(pipeline):
    """Each batch's identity lookup (new anonymous ids every batch) runs while the previous batch is being
    written: no write or lookup may fail and be retried for it, and every event lands once."""
    env, settings, client, publisher = pipeline
    db = settings.clickhouse_database
    for b in range(20):
        publish(publisher, "ws_many", [ev(b * 300 + i, anon=f"dev_{b}_{i}") for i in range(300)])
    consumer = ConsumerProcess({**env, "FLOKIT_BATCH_MAX_EVENTS": "300"})
    try:
        wait_until(lambda: count(client, db, "SELECT count() FROM {db}.events") == 6000, message="6000 rows")
    finally:
        code, out = consumer.stop()
    assert code == 0 and "flush failed" not in out, out
    assert count(client, db, "SELECT uniqExact(event_id) FROM {db}.events") == 6000


def test_dead_letters(pipeline):
    env, settings, client, publisher = pipeline
    db = settings.clickhouse_database
    publisher.publish([Record(0, b"\xff not an envelope"), Record(1, b'{"v": 99}')], timeout=10)
    # A well-formed envelope from a producer that bypassed the front door's validation:
    # the events table's constraint refuses its year-2250 timestamp.
    publish(publisher, "ws_dlq", [{**ev(1, user="usr_future"), "timestamp": "2250-01-01T00:00:00.000Z"}])
    publish(publisher, "ws_dlq", [ev(2, user="usr_ok"), ev(3, anon="dev_ok")])
    consumer = ConsumerProcess(env)
    try:
        wait_until(lambda: count(client, db, "SELECT count() FROM {db}.events") == 2, message="good rows")
        letters = wait_until(
            lambda: (lambda got: got if len(got) >= 3 else None)(read_dead_letters(settings)),
            message="3 dead letters",
        )
    finally:
        consumer.stop()
    reasons = sorted(letter["reason"].split(":")[0] for letter in letters)
    assert reasons == ["corrupt envelope", "corrupt envelope", "rejected by the warehouse"], reasons
    rejected = next(letter for letter in letters if letter["reason"].startswith("rejected"))
    assert envelope.decode(rejected["value"].encode()).refs[0].event_id == ev(1)["event_id"]
    assert next(letter for letter in letters if "value_base64" in letter)["partition"] == 0
    assert all(letter["topic"] == settings.topic for letter in letters) and len(letters) == 3
    assert sorted(r[0] for r in client.query(f"SELECT event_id FROM {db}.events").result_rows) == [
        ev(2)["event_id"],
        ev(3)["event_id"],
    ]


def test_warehouse_down_then_up_loses_nothing(queue_env, tmp_path):
    data_dir = tmp_path / "wh"
    proc, url = start_warehouse(data_dir)
    env = {
        **queue_env,
        "FLOKIT_CLICKHOUSE_URL": url,
        "FLOKIT_CLICKHOUSE_DATABASE": "flokit_down",
        "FLOKIT_BATCH_MAX_SECONDS": "0.3",
    }
    settings = Settings.from_env(env)
    clickhouse.migrate(settings)

    def count_rows(view: str) -> int:
        return count(clickhouse.connect(settings), "flokit_down", "SELECT count() FROM {db}." + view)

    publisher = components.make_publisher(settings)
    consumer = ConsumerProcess(env)
    try:
        publish(publisher, "ws_down", [ev(i, user="u") for i in range(50)])
        wait_until(lambda: count_rows("events") == 50)
        stop_warehouse(proc)
        publish(publisher, "ws_down", [ev(100 + i, user="u") for i in range(50)])
        time.sleep(3)  # the worker fails, backs off, commits nothing
        proc, _ = start_warehouse(data_dir, port=int(url.rsplit(":", 1)[1]))
        wait_until(lambda: count_rows("events_resolved") == 100, timeout=90, message="caught up")
    finally:
        code, out = consumer.stop()
        publisher.close()
        stop_warehouse(proc)
    assert "retrying" in out


def test_sigterm_writes_and_commits_the_batch_in_hand(pipeline):
    env, settings, client, publisher = pipeline
    db = settings.clickhouse_database
    slow = {**env, "FLOKIT_BATCH_MAX_SECONDS": "120"}
    consumer = ConsumerProcess(slow)
    publish(publisher, "ws_term", [ev(i, user="u") for i in range(40)])
    time.sleep(4)  # polled, but the batch is not due for two minutes
    assert count(client, db, "SELECT count() FROM {db}.events") == 0
    code, out = consumer.stop()
    assert code == 0, out
    assert count(client, db, "SELECT count() FROM {db}.events") == 40
    # Committed: a new member of the group finds nothing left to write.
    again = ConsumerProcess(env)
    time.sleep(4)
    again.stop()
    assert count(client, db, "SELECT count() FROM {db}.events") == 40
