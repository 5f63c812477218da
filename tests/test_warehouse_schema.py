"""The warehouse schema (schemas/migrations) and its contract (schemas/warehouse.py), on the real embedded
warehouse: migrations, row builders, deduplication before any merge, identity resolution.

The seeded world below (seed_world) is shared with tests/test_analytics_docs.py and tests/test_sql_cli.py;
it is inserted the way the consumer inserts: envelope lines through event_row, and link_document, through the
consumer's own BatchWriter (clickhouse-connect, JSONEachRow), with insert_deduplication_token, merges stopped
so every duplicate is physically present.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from consumer.identity import resolve_links
from consumer.writer import BatchWriter
from deploy import clickhouse
from deploy.clickhouse import migrate_main
from deploy.settings import Settings
from schemas import envelope, warehouse
from schemas.migrations import (
    Migration,
    MigrationError,
    Topology,
    apply_migrations,
    bootstrap_statements,
    load_migrations,
    render,
    render_all,
)
from schemas.taxonomy import PROPERTY_TYPES
from schemas.warehouse import EVENT_COLUMNS, LINK_COLUMNS, event_row, link_document

from .warehouse_process import start_warehouse, stop_warehouse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UTC = UTC
RECEIVED_AT = "2024-04-10T11:59:59.000Z"


# -- the seeded world --------------------------------------------------------------------------------------


def ev(
    event_id: str, name: str, ts: str, *, user: str | None = None, anon: str | None = None, **props
) -> dict:
    """A validated event as the consumer gets it from an envelope. ts: 'MM-DD HH:MM' in 2024."""
    month_day, hour_minute = ts.split()
    return {
        "event_id": f"evt_{event_id}",
        "event": name,
        "user_id": user,
        "anonymous_id": anon,
        "timestamp": f"2024-{month_day}T{hour_minute}:00.000Z",
        "properties": props,
    }


ANNUAL, MONTHLY = "plan_annual", "plan_monthly"
# (workspace, event, linked_user_id the consumer stamped at ingest)
WORLD: list[tuple[str, dict, str | None]] = [
    # Alice: anonymous on her phone (dev_a), logs in starting a trial, converts; later her tablet (dev_a2).
    (
        "acme",
        ev(
            "a1",
            "paywall_viewed",
            "03-01 10:00",
            anon="dev_a",
            paywall_id="pw_onboarding",
            offer_id="offer_intro",
            plan_ids=[ANNUAL, MONTHLY],
            placement="onboarding",
        ),
        None,
    ),
    (
        "acme",
        ev(
            "a2",
            "trial_started",
            "03-01 10:02",
            user="usr_alice",
            anon="dev_a",
            plan_id=ANNUAL,
            offer_id="offer_intro",
            paywall_id="pw_onboarding",
            trial_length_days=7,
            price=59.99,
            currency="USD",
        ),
        None,
    ),
    (
        "acme",
        ev("a3", "paywall_dismissed", "03-02 08:00", anon="dev_a", paywall_id="pw_settings"),
        "usr_alice",
    ),
    (
        "acme",
        ev(
            "a4",
            "trial_converted",
            "03-08 10:02",
            user="usr_alice",
            plan_id=ANNUAL,
            revenue=59.99,
            price=59.99,
            currency="USD",
        ),
        None,
    ),
    (
        "acme",
        ev("a5", "paywall_viewed", "03-10 12:00", anon="dev_a2", paywall_id="pw_settings", plan_ids=[ANNUAL]),
        None,
    ),
    ("acme", ev("a6", "app_opened", "03-10 12:05", user="usr_alice", anon="dev_a2"), None),
    # Bob: trial of the monthly plan expires, then he subscribes anyway.
    (
        "acme",
        ev(
            "b1",
            "paywall_viewed",
            "03-02 09:00",
            anon="dev_b",
            paywall_id="pw_onboarding",
            offer_id="offer_intro",
            plan_ids=[ANNUAL, MONTHLY],
        ),
        None,
    ),
    (
        "acme",
        ev(
            "b2",
            "trial_started",
            "03-02 09:03",
            user="usr_bob",
            anon="dev_b",
            plan_id=MONTHLY,
            offer_id="offer_intro",
            trial_length_days=7,
        ),
        None,
    ),
    ("acme", ev("b3", "trial_expired", "03-09 09:03", user="usr_bob", plan_id=MONTHLY), None),
    (
        "acme",
        ev(
            "b4",
            "subscription_started",
            "03-12 10:00",
            user="usr_bob",
            plan_id=MONTHLY,
            revenue=9.99,
            price=9.99,
            currency="USD",
        ),
        None,
    ),
    # Carol: buys the monthly plan straight away (no trial), renews in April.
    (
        "acme",
        ev(
            "c1",
            "paywall_viewed",
            "03-03 15:00",
            anon="dev_c",
            paywall_id="pw_onboarding",
            plan_ids=[ANNUAL, MONTHLY],
        ),
        None,
    ),
    (
        "acme",
        ev(
            "c2",
            "subscription_started",
            "03-03 15:01",
            user="usr_carol",
            anon="dev_c",
            plan_id=MONTHLY,
            revenue=9.99,
            price=9.99,
            currency="USD",
        ),
        None,
    ),
    (
        "acme",
        ev(
            "c3",
            "subscription_renewed",
            "04-03 15:01",
            user="usr_carol",
            plan_id=MONTHLY,
            revenue=9.99,
            currency="USD",
            renewal_number=1,
        ),
        None,
    ),
    # Dave: never logs in.
    (
        "acme",
        ev(
            "d1",
            "paywall_viewed",
            "03-04 11:00",
            anon="dev_d",
            paywall_id="pw_onboarding",
            offer_id="offer_winback",
            plan_ids=[ANNUAL],
        ),
        None,
    ),
    ("acme", ev("d2", "paywall_dismissed", "03-04 11:01", anon="dev_d", paywall_id="pw_onboarding"), None),
    # A shared device: Erin logs in first, Frank later (the identity conflict). The consumer saw Frank's link
    # first (Erin's event arrived late) and stamped him on s2; the warehouse's policy says Erin.
    (
        "acme",
        ev(
            "s1",
            "paywall_viewed",
            "03-05 09:00",
            anon="dev_shared",
            paywall_id="pw_onboarding",
            offer_id="offer_intro",
            plan_ids=[ANNUAL],
        ),
        None,
    ),
    (
        "acme",
        ev(
            "e1",
            "trial_started",
            "03-05 09:10",
            user="usr_erin",
            anon="dev_shared",
            plan_id=ANNUAL,
            offer_id="offer_intro",
            trial_length_days=7,
        ),
        None,
    ),
    (
        "acme",
        ev(
            "f1",
            "paywall_viewed",
            "03-06 20:00",
            user="usr_frank",
            anon="dev_shared",
            paywall_id="pw_settings",
            offer_id="offer_winback",
            plan_ids=[MONTHLY],
        ),
        None,
    ),
    (
        "acme",
        ev("s2", "paywall_dismissed", "03-06 20:05", anon="dev_shared", paywall_id="pw_settings"),
        "usr_frank",
    ),
    (
        "acme",
        ev(
            "f2",
            "subscription_started",
            "03-06 20:10",
            user="usr_frank",
            plan_id=MONTHLY,
            offer_id="offer_winback",
            revenue=4.99,
            currency="USD",
        ),
        None,
    ),
    (
        "acme",
        ev(
            "e2",
            "trial_converted",
            "03-12 09:10",
            user="usr_erin",
            plan_id=ANNUAL,
            revenue=59.99,
            currency="USD",
        ),
        None,
    ),
    (
        "acme",
        ev(
            "f3",
            "refund_issued",
            "03-15 12:00",
            user="usr_frank",
            plan_id=MONTHLY,
            revenue=-4.99,
            currency="USD",
            reason="customer_request",
        ),
        None,
    ),
    # Grace: a 14-day trial; converts just outside a 14-day funnel window.
    (
        "acme",
        ev("g1", "paywall_viewed", "03-01 08:00", anon="dev_g", offer_id="offer_intro", plan_ids=[ANNUAL]),
        None,
    ),
    (
        "acme",
        ev(
            "g2",
            "trial_started",
            "03-01 08:05",
            user="usr_grace",
            anon="dev_g",
            plan_id=ANNUAL,
            offer_id="offer_intro",
            trial_length_days=14,
        ),
        None,
    ),
    (
        "acme",
        ev(
            "g3",
            "trial_converted",
            "03-15 08:05",
            user="usr_grace",
            plan_id=ANNUAL,
            revenue=59.99,
            currency="USD",
        ),
        None,
    ),
    # Heidi: cancels her trial.
    (
        "acme",
        ev("h1", "paywall_viewed", "03-20 10:00", anon="dev_h", offer_id="offer_intro", plan_ids=[ANNUAL]),
        None,
    ),
    (
        "acme",
        ev(
            "h2",
            "trial_started",
            "03-20 10:01",
            user="usr_heidi",
            anon="dev_h",
            plan_id=ANNUAL,
            offer_id="offer_intro",
            trial_length_days=7,
        ),
        None,
    ),
    ("acme", ev("h3", "trial_cancelled", "03-22 10:00", user="usr_heidi", plan_id=ANNUAL), None),
    # An anonymous event whose link only the consumer knew (no
    # identity_links row): linked_user_id is the fallback.
    ("acme", ev("l1", "app_opened", "03-25 10:00", anon="dev_legacy"), "usr_legacy"),
    # Another workspace using the same anonymous id, linked earlier to another user: must not leak into acme.
    (
        "globex",
        ev(
            "x1",
            "paywall_viewed",
            "03-05 09:00",
            anon="dev_shared",
            offer_id="offer_intro",
            plan_ids=[ANNUAL],
        ),
        None,
    ),
    (
        "globex",
        ev("x2", "trial_started", "03-04 09:00", user="usr_zed", anon="dev_shared", plan_id=ANNUAL),
        None,
    ),
]
# Delivered twice by the queue (a redelivery after a consumer crash): inserted again in a later batch.
REDELIVERED = ("evt_a2", "evt_a4", "evt_e1")
WORLD_EVENTS = len(WORLD)  # 31 distinct events
ACME_EVENTS = sum(1 for ws, _, _ in WORLD if ws == "acme")  # 29


def event_rows(items) -> bytes:
    """(workspace, event, linked_user_id) items as the consumer's JSONEachRow body: each event's line
    from a front-door envelope, with linked_user_id added where the consumer knows it."""
    rows = []
    for ws, e, linked in items:
        [line] = envelope.decode(envelope.encode_records(ws, RECEIVED_AT, [e])[0]).rows
        rows.append(event_row(line, linked))
    return b"\n".join(rows)


def insert_batch(client, database: str, items, token: str) -> None:
    """What the consumer does per batch: links, then events, each with the batch's dedup token."""
    writer = BatchWriter(client, database)
    links = [
        link_document(ws, e["event_id"], e["anonymous_id"], e["user_id"], e["timestamp"])
        for ws, e, _ in items
        if e["anonymous_id"] and e["user_id"]
    ]
    writer.write(
        warehouse.LINKS_TABLE, LINK_COLUMNS, warehouse.encode(links) if links else b"", token + ":links"
    )
    writer.write(warehouse.EVENTS_TABLE, EVENT_COLUMNS, event_rows(items), token)


def seed_world(client, database: str) -> None:
    """Migrate `database` and insert WORLD as a consumer would, with merges stopped:
    batch 1 = everything but Erin's trial_started and the shared device's later events, Frank's link first;
    batch 1 again with the same token (an insert retried after a timeout: dropped by the token);
    batch 2 = the rest; batch 3 = REDELIVERED events again under a new token (physically duplicated)."""
    apply_migrations(client, database)
    for table in (warehouse.EVENTS_TABLE, warehouse.LINKS_TABLE, warehouse.IDENTITY_MAP_TABLE):
        client.command(f"SYSTEM STOP MERGES {database}.{table}")
    late = {"evt_e1", "evt_e2"}
    first = [item for item in WORLD if item[1]["event_id"] not in late]
    insert_batch(client, database, first, "batch-1")
    insert_batch(client, database, first, "batch-1")  # retried insert: same token, dropped
    insert_batch(client, database, [item for item in WORLD if item[1]["event_id"] in late], "batch-2")
    insert_batch(client, database, [item for item in WORLD if item[1]["event_id"] in REDELIVERED], "batch-3")


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def warehouse_url(tmp_path_factory):
    proc, url = start_warehouse(tmp_path_factory.mktemp("warehouse"))
    yield url
    assert stop_warehouse(proc) == 0


def settings_for(url: str, database: str, **env) -> Settings:
    return Settings.from_env({"FLOKIT_CLICKHOUSE_URL": url, "FLOKIT_CLICKHOUSE_DATABASE": database, **env})


def fresh_db() -> str:
    return f"flokit_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def client(warehouse_url):
    c = clickhouse.connect(settings_for(warehouse_url, "default"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def world(client):
    database = fresh_db()
    seed_world(client, database)
    return database


def scalar(client, sql: str, **params):
    return client.query(sql, parameters=params or None).result_rows[0][0]


# -- migrations --------------------------------------------------------------------------------------------


def test_migration_files_are_numbered_and_say_what_they_do():
    migrations = load_migrations()
    assert [m.name for m in migrations] == [
        "0001_events",
        "0002_identity",
        "0003_analyst_views",
        "0004_ingested_at_default",
    ]
    assert [m.number for m in migrations] == [1, 2, 3, 4]
    assert all(m.description and len(m.checksum) == 64 for m in migrations)


def test_migrations_ship_as_package_data():
    # setup.cfg: [options.package_data] schemas = ..., migrations/*.sql; the directory must be a package.
    assert os.path.isfile(os.path.join(ROOT, "schemas", "migrations", "__init__.py"))
    setup = open(os.path.join(ROOT, "setup.cfg")).read()
    assert "migrations/*.sql" in setup


def test_migrate_applies_once_and_records_it(client):
    database = fresh_db()
    assert database not in client.query("SHOW DATABASES").result_columns[0]
    assert apply_migrations(client, database) == [
        "0001_events",
        "0002_identity",
        "0003_analyst_views",
        "0004_ingested_at_default",
    ]
    assert apply_migrations(client, database) == []
    rows = client.query(
        f"SELECT name, checksum, applied_at FROM {database}.schema_migrations ORDER BY name"
    ).result_rows
    assert [(r[0], r[1]) for r in rows] == [(m.name, m.checksum) for m in load_migrations()]
    assert all(isinstance(r[2], datetime) for r in rows)
    objects = set(client.query(f"SHOW TABLES FROM {database}").result_columns[0])
    assert objects == {
        "schema_migrations",
        "events",
        "identity_links",
        "identity_map",
        "identity_map_mv",
        "identity_resolved",
        "events_deduped",
        "events_resolved",
        "paywall_funnel",
    }


def test_migrate_applies_only_what_is_new(client):
    database = fresh_db()
    migrations = load_migrations()
    assert apply_migrations(client, database, migrations=migrations[:1]) == ["0001_events"]
    assert apply_migrations(client, database) == [
        "0002_identity",
        "0003_analyst_views",
        "0004_ingested_at_default",
    ]


def test_migrate_refuses_a_changed_applied_file(client):
    database = fresh_db()
    apply_migrations(client, database)
    original = load_migrations()
    edited = Migration.from_text("0001_events.sql", original[0].text + "\n-- an innocent edit\n")
    with pytest.raises(MigrationError, match="0001_events.*changed since they were applied"):
        apply_migrations(client, database, migrations=[edited, *original[1:]])
    # Nothing was applied or recorded by the refused run.
    assert scalar(client, f"SELECT count() FROM {database}.schema_migrations") == 4


def test_a_new_migration_after_the_applied_ones_is_applied(client):
    database = fresh_db()
    apply_migrations(client, database)
    extra = Migration.from_text(
        "0099_extra_view.sql",
        "-- 0099_extra_view: a test view.\n"
        "CREATE VIEW IF NOT EXISTS {{db}}.extra {{on_cluster}} AS SELECT 1 AS one\n",
    )
    assert apply_migrations(client, database, migrations=[*load_migrations(), extra]) == ["0099_extra_view"]
    assert scalar(client, f"SELECT one FROM {database}.extra") == 1


def test_a_refused_statement_names_the_migration_and_keeps_clickhouses_reason(client):
    bad = Migration.from_text(
        "0099_bad.sql",
        "-- 0099_bad: a statement ClickHouse refuses.\n"
        "CREATE VIEW {{db}}.bad {{on_cluster}} AS SELECT * FROM {{db}}.no_such_table\n",
    )
    with pytest.raises(MigrationError, match="0099_bad: statement 1 of 1 failed") as refused:
        apply_migrations(client, fresh_db(), migrations=[*load_migrations(), bad])
    reason = clickhouse.clickhouse_message(refused.value.__cause__)
    assert reason.startswith("Code: 60.") and "UNKNOWN_TABLE" in reason and "(version" not in reason


def test_migration_file_rules():
    with pytest.raises(MigrationError, match="named NNNN"):
        Migration.from_text("events.sql", "-- events: x\nSELECT 1")
    with pytest.raises(MigrationError, match="first line must say what it does"):
        Migration.from_text("0009_x.sql", "SELECT 1")
    bad = Migration.from_text("0009_x.sql", "-- 0009_x: bad.\nSELECT {{nope}}")
    with pytest.raises(MigrationError, match="unknown placeholder"):
        render(bad, Topology("flokit"))


def test_flokit_migrate_command(warehouse_url):
    env = {**os.environ, "FLOKIT_CLICKHOUSE_URL": warehouse_url, "FLOKIT_CLICKHOUSE_DATABASE": fresh_db()}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy.cli", "migrate"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    first, second = run(), run()
    assert first.returncode == 0, first.stderr
    assert "applied 0001_events: the events table" in first.stdout
    assert "4 applied now" in first.stdout
    assert second.returncode == 0 and "up to date" in second.stdout and "applied 0001" not in second.stdout


def test_migrate_print_renders_without_a_server():
    out = io.StringIO()
    settings = Settings.from_env(
        {"FLOKIT_CLICKHOUSE_CLUSTER": "prod", "FLOKIT_CLICKHOUSE_URL": "http://127.0.0.1:1"}
    )
    assert migrate_main(settings, print_only=True, stdout=out) == 0
    assert "ON CLUSTER `prod`" in out.getvalue() and "-- 0003_analyst_views" in out.getvalue()


# -- the cluster topology (rendered and parsed only: no cluster runs here) ---------------------------------


def test_single_node_rendering_has_no_cluster_parts():
    text = "\n".join(s for _, statements in render_all(Topology("flokit")) for s in statements)
    for word in ("ON CLUSTER", "Replicated", "Distributed", "_local", "{{", "}}"):
        assert word not in text


def test_cluster_rendering():
    topology = Topology("flokit", "prod")
    rendered = dict(render_all(topology))
    statements = [s for ss in rendered.values() for s in ss] + bootstrap_statements(topology)
    assert all("ON CLUSTER `prod`" in s for s in statements)
    assert not any("{{" in s for s in statements)

    creates = {s.split("IF NOT EXISTS ", 1)[1].split()[0]: s for s in statements if " IF NOT EXISTS " in s}
    path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
    # Data lives in replicated local tables...
    assert f"ENGINE = ReplicatedReplacingMergeTree({path})" in creates["`flokit`.`events_local`"]
    assert f"ENGINE = ReplicatedMergeTree({path})" in creates["`flokit`.`identity_links_local`"]
    assert f"ENGINE = ReplicatedAggregatingMergeTree({path})" in creates["`flokit`.`identity_map_local`"]
    assert (
        "ReplicatedMergeTree('/clickhouse/tables/all/{database}/{table}'"
        in creates["`flokit`.schema_migrations"]
    )
    assert not any(
        " MergeTree" in s or "= ReplacingMergeTree" in s or "= AggregatingMergeTree" in s for s in statements
    )
    # ...behind Distributed tables of the plain names, sharded so a device's events share a shard.
    assert (
        "AS `flokit`.`events_local`\nENGINE = Distributed('prod', 'flokit', 'events_local', "
        "cityHash64(workspace, coalesce(anonymous_id, user_id)))"
    ) in creates["`flokit`.events"]
    assert (
        "Distributed('prod', 'flokit', 'identity_links_local', cityHash64(workspace, anonymous_id))"
        in creates["`flokit`.identity_links"]
    )
    assert (
        "Distributed('prod', 'flokit', 'identity_map_local', cityHash64(workspace, anonymous_id))"
        in creates["`flokit`.identity_map"]
    )
    # The materialized view works shard-locally; every view reads the Distributed tables.
    mv = creates["`flokit`.identity_map_mv"]
    assert "TO `flokit`.`identity_map_local`" in mv and "FROM `flokit`.`identity_links_local`" in mv
    assert "FROM `flokit`.identity_map\n" in creates["`flokit`.identity_resolved"]
    assert "FROM `flokit`.events FINAL" in creates["`flokit`.events_deduped"]
    for view in ("identity_resolved", "events_deduped", "events_resolved", "paywall_funnel"):
        assert "_local" not in creates[f"`flokit`.{view}"], view
    assert "CREATE DATABASE IF NOT EXISTS `flokit` ON CLUSTER `prod`" in statements


def test_cluster_statements_parse_on_clickhouse(client):
    """ClickHouse's own parser (formatQuery) accepts every statement of the cluster rendering."""
    topology = Topology("flokit", "prod")
    statements = bootstrap_statements(topology) + [s for _, ss in render_all(topology) for s in ss]
    for statement in statements:
        formatted = scalar(client, "SELECT formatQuery({q:String})", q=statement)
        assert "ON CLUSTER prod" in formatted


# -- row builders ------------------------------------------------------------------------------------------


def test_event_columns_match_the_table(client, world):
    described = client.query(f"DESCRIBE TABLE {world}.events").result_rows
    stored = [r for r in described if r[2] != "EPHEMERAL"]
    assert tuple(r[0] for r in stored) == EVENT_COLUMNS + warehouse.PROPERTY_COLUMNS
    types = {r[0]: r[1] for r in described}
    # The consumer inserts EVENT_COLUMNS; ClickHouse fills each property column from `properties`,
    # parsed once per row into the never-stored typed_properties tuple.
    defaults = {r[0]: (r[2], r[3]) for r in described}
    assert (
        defaults["typed_properties"][0] == "EPHEMERAL"
        and "JSONExtract(properties" in defaults["typed_properties"][1]
    )
    for name in warehouse.PROPERTY_COLUMNS:
        assert defaults[name] == ("DEFAULT", f"tupleElement(typed_properties, '{name}')"), name
    expected = {
        "string": ("LowCardinality(Nullable(String))", "Nullable(String)"),
        "number": ("Nullable(Float64)",),
        "integer": ("Nullable(Int64)",),
        "boolean": ("Nullable(Bool)",),
        "string[]": ("Array(String)",),
    }
    for name in warehouse.PROPERTY_COLUMNS:
        assert types[name] in expected[PROPERTY_TYPES[name]], name
    for name in (
        "paywall_id",
        "offer_id",
        "plan_id",
        "placement",
        "context",
        "store",
        "currency",
        "price",
        "revenue",
        "trial_length_days",
        "transaction_id",
        "is_trial",
        "plan_ids",
    ):
        assert name in warehouse.PROPERTY_COLUMNS
    assert (
        tuple(r[0] for r in client.query(f"DESCRIBE TABLE {world}.identity_links").result_rows)
        == LINK_COLUMNS
    )


def test_event_row_is_the_envelope_line_with_linked_user_id_when_known():
    event = {
        "event_id": "evt_1",
        "event": "purchase_completed",
        "user_id": None,
        "anonymous_id": "d",
        "timestamp": "2024-03-15T14:22:00.123Z",
        "properties": {"price": 59, "note": "a\nb"},
    }
    [line] = envelope.decode(envelope.encode_records("acme", "2024-03-15T14:22:01.000Z", [event])[0]).rows
    assert event_row(line, None) is line
    doc = orjson.loads(event_row(line, "u9"))
    # Every column but ingested_at, which ClickHouse stamps (its default).
    assert set(doc) == set(EVENT_COLUMNS) - {"ingested_at"}
    assert doc == {
        **event,
        "workspace": "acme",
        "received_at": "2024-03-15T14:22:01.000Z",
        "linked_user_id": "u9",
    }


def test_the_warehouse_types_the_property_columns(client, warehouse_url):
    """Typed columns are ClickHouse's JSONExtract of `properties`: the JSON keeps everything as sent."""
    database = fresh_db()
    apply_migrations(client, database)
    good = {
        "paywall_id": "pw_1",
        "plan_id": "plan_annual",
        "price": 59,
        "revenue": 29.99,
        "is_trial": False,
        "trial_length_days": 7,
        "currency": "USD",
        "plan_ids": ["a", "b"],
        "note": "hé ✓",
        "nested": {"a": [1, 2]},
    }
    # Types only a producer that bypassed the front door could send.
    odd = {
        "revenue": True,
        "trial_length_days": "seven",
        "renewal_number": 2**64 - 1,
        "offer_id": ["x"],
        "currency": {"c": 1},
    }
    body = event_rows(
        [
            (
                "acme",
                {
                    "event_id": f"evt_{i}",
                    "event": "purchase_completed",
                    "user_id": "u1",
                    "anonymous_id": None,
                    "timestamp": "2024-03-15T14:22:00.123+02:00",
                    "properties": p,
                },
                None,
            )
            for i, p in enumerate((good, odd, {}))
        ]
    )
    BatchWriter(client, database).write(warehouse.EVENTS_TABLE, EVENT_COLUMNS, body, "typed")
    rows = {
        r["event_id"]: r
        for r in client.query(f"SELECT * FROM {database}.events ORDER BY event_id").named_results()
    }
    first = rows["evt_0"]
    assert first["timestamp"].replace(tzinfo=UTC) == datetime(2024, 3, 15, 12, 22, 0, 123000, tzinfo=UTC)
    # ingested_at: ClickHouse's insert time.
    assert abs(first["ingested_at"].replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=5)
    assert orjson.loads(first["properties"]) == good
    assert (
        first["paywall_id"],
        first["plan_id"],
        first["price"],
        first["revenue"],
        first["is_trial"],
        first["trial_length_days"],
        first["currency"],
        first["plan_ids"],
    ) == ("pw_1", "plan_annual", 59.0, 29.99, False, 7, "USD", ["a", "b"])
    assert first["offer_id"] is None and first["transaction_id"] is None
    second = rows["evt_1"]
    assert orjson.loads(second["properties"]) == odd
    # JSONExtract's conversions: what does not fit a number is NULL; a string column takes the JSON text.
    assert (
        second["trial_length_days"],
        second["renewal_number"],
        second["offer_id"],
        second["currency"],
    ) == (None, None, '["x"]', '{"c":1}')
    empty = rows["evt_2"]
    assert empty["properties"] == "{}" and empty["plan_ids"] == [] and empty["price"] is None


def test_link_document():
    event = {
        "event_id": "evt_9",
        "event": "login",
        "user_id": "u",
        "anonymous_id": "d",
        "timestamp": "2024-03-15T14:22:00.500Z",
        "properties": {},
    }

    def link(e):
        return link_document("acme", e["event_id"], e["anonymous_id"], e["user_id"], e["timestamp"])

    assert link(event) == {
        "workspace": "acme",
        "anonymous_id": "d",
        "user_id": "u",
        "timestamp": "2024-03-15T14:22:00.500Z",
        "event_id": "evt_9",
    }
    assert set(link(event)) == set(LINK_COLUMNS)
    for missing in ({"user_id": None}, {"anonymous_id": None}):
        with pytest.raises(ValueError):
            link({**event, **missing})


def test_rows_round_trip_through_the_warehouse(client, world):
    got = next(
        client.query(f"SELECT * FROM {world}.events_deduped WHERE event_id = 'evt_a2'").named_results()
    )
    assert got["timestamp"].replace(tzinfo=UTC) == datetime(2024, 3, 1, 10, 2, tzinfo=UTC)
    assert abs(got["ingested_at"].replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(hours=1)
    assert (got["plan_id"], got["offer_id"], got["trial_length_days"], got["price"], got["currency"]) == (
        ANNUAL,
        "offer_intro",
        7,
        59.99,
        "USD",
    )
    assert got["plan_ids"] == [] and got["is_trial"] is None
    viewed = client.query(
        f"SELECT plan_ids, placement FROM {world}.events_deduped WHERE event_id = 'evt_a1'"
    ).result_rows
    assert viewed == [([ANNUAL, MONTHLY], "onboarding")]


# -- deduplication -----------------------------------------------------------------------------------------


def test_duplicates_are_physically_present_but_every_view_counts_once(client, world):
    # Merges are stopped: batch 3 re-inserted three events as parts of their own.
    assert scalar(client, f"SELECT count() FROM {world}.events") == WORLD_EVENTS + len(REDELIVERED)
    assert (
        scalar(
            client,
            f"SELECT count() FROM system.parts WHERE database = '{world}' AND table = 'events' AND active",
        )
        >= 3
    )
    assert scalar(client, f"SELECT count() FROM {world}.events_deduped") == WORLD_EVENTS
    assert scalar(client, f"SELECT count() FROM {world}.events_resolved") == WORLD_EVENTS
    assert scalar(client, f"SELECT uniqExact(event_id) FROM {world}.events") == WORLD_EVENTS
    assert scalar(client, f"SELECT count() FROM {world}.paywall_funnel WHERE event_id = 'evt_a4'") == 1


def test_a_retried_insert_with_the_same_token_is_dropped(client, warehouse_url):
    database = fresh_db()
    apply_migrations(client, database)
    items = WORLD[:5]
    for _ in range(3):
        insert_batch(client, database, items, "same-token")
    assert scalar(client, f"SELECT count() FROM {database}.events") == 5
    insert_batch(client, database, items, "another-token")  # a different batch: stored, FINAL hides it
    assert scalar(client, f"SELECT count() FROM {database}.events") == 10
    assert scalar(client, f"SELECT count() FROM {database}.events_deduped") == 5


def test_merges_collapse_duplicates_for_good(client, warehouse_url):
    database = fresh_db()
    apply_migrations(client, database)
    for token in ("t1", "t2", "t3"):
        insert_batch(client, database, WORLD[:4], token)
    assert scalar(client, f"SELECT count() FROM {database}.events") == 12
    client.command(f"OPTIMIZE TABLE {database}.events FINAL")
    assert scalar(client, f"SELECT count() FROM {database}.events") == 4


# -- identity ----------------------------------------------------------------------------------------------


def test_identity_resolved_first_link_wins(client, world):
    rows = client.query(
        f"SELECT workspace, anonymous_id, user_id FROM {world}.identity_resolved "
        "ORDER BY workspace, anonymous_id"
    ).result_rows
    assert rows == [
        ("acme", "dev_a", "usr_alice"),
        ("acme", "dev_a2", "usr_alice"),
        ("acme", "dev_b", "usr_bob"),
        ("acme", "dev_c", "usr_carol"),
        ("acme", "dev_g", "usr_grace"),
        ("acme", "dev_h", "usr_heidi"),
        # Frank's link was inserted first, Erin's event is earlier: Erin wins.
        ("acme", "dev_shared", "usr_erin"),
        ("globex", "dev_shared", "usr_zed"),
    ]
    # Both links are kept as facts.
    assert client.query(
        f"SELECT user_id FROM {world}.identity_links WHERE workspace = 'acme' "
        "AND anonymous_id = 'dev_shared' GROUP BY user_id ORDER BY user_id"
    ).result_columns[0] == ["usr_erin", "usr_frank"]


def test_events_resolved_attribution(client, world):
    rows = client.query(
        f"SELECT event_id, user_id, linked_user_id, resolved_user_id, person_id FROM {world}.events_resolved "
        "WHERE workspace = 'acme' AND event_id IN "
        "('evt_a1', 'evt_a3', 'evt_a5', 'evt_s1', 'evt_s2', 'evt_f1', 'evt_f2', 'evt_d1', 'evt_l1') "
        "ORDER BY event_id"
    ).result_rows
    assert rows == [
        ("evt_a1", None, None, "usr_alice", "usr_alice"),  # pre-login, via identity_resolved
        ("evt_a3", None, "usr_alice", "usr_alice", "usr_alice"),
        ("evt_a5", None, None, "usr_alice", "usr_alice"),  # her second device
        ("evt_d1", None, None, None, "dev_d"),  # never linked: the device is the person
        ("evt_f1", "usr_frank", None, "usr_frank", "usr_frank"),  # carries its own user id: keeps it
        ("evt_f2", "usr_frank", None, "usr_frank", "usr_frank"),
        ("evt_l1", None, "usr_legacy", "usr_legacy", "usr_legacy"),  # only the consumer knew: fallback
        ("evt_s1", None, None, "usr_erin", "usr_erin"),  # shared device: first link wins
        ("evt_s2", None, "usr_frank", "usr_erin", "usr_erin"),  # the policy overrides what ingest stamped
    ]
    assert (
        scalar(client, f"SELECT resolved_user_id FROM {world}.events_resolved WHERE event_id = 'evt_x1'")
        == "usr_zed"
    )


def test_resolve_links(client, world):
    pairs = {
        ("acme", "dev_a"),
        ("acme", "dev_shared"),
        ("globex", "dev_shared"),
        ("acme", "dev_d"),
        ("other", "dev_a"),
        ("acme", "it's \\ `odd`"),
    }
    assert resolve_links(client, world, pairs) == {
        ("acme", "dev_a"): "usr_alice",
        ("acme", "dev_shared"): "usr_erin",
        ("globex", "dev_shared"): "usr_zed",
    }
    assert resolve_links(client, world, set()) == {}


def test_resolve_links_with_many_pairs(client, world):
    pairs = {("acme", f"dev_unknown_{i:05d}_{'x' * 40}") for i in range(5000)} | {("acme", "dev_b")}
    assert resolve_links(client, world, pairs) == {("acme", "dev_b"): "usr_bob"}


# -- connect -----------------------------------------------------------------------------------------------


def test_connect_parses_the_url(warehouse_url):
    host_port = warehouse_url.split("://", 1)[1]
    # The embedded server ignores credentials; a real server gets them from the URL.
    c = clickhouse.connect(settings_for(f"http://analyst:s%3Dcr%40t@{host_port}", "nope_not_yet"))
    try:
        assert c.database == "nope_not_yet"  # connecting works before the database exists
        assert c.command("SELECT 1", use_database=False) == 1
    finally:
        c.close()
    assert clickhouse.client_options(f"http://analyst:s%3Dcr%40t@{host_port}")["password"] == "s=cr@t"
    opts = clickhouse.client_options("https://ch.example.com")
    assert (opts["host"], opts["port"], opts["secure"], opts["username"]) == (
        "ch.example.com",
        8443,
        True,
        None,
    )
    assert clickhouse.describe_url("http://u:secret@h:1") == "http://u:***@h:1"
    with pytest.raises(clickhouse.WarehouseUnreachable, match="127.0.0.1:9"):
        clickhouse.connect(settings_for("http://127.0.0.1:9", "d"), connect_timeout=2)
