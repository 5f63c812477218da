"""`flokit sql`, run as analysts run it: a subprocess with FLOKIT_CLICKHOUSE_URL pointing at a warehouse.

The `table` output is ClickHouse's PrettyCompact (deploy/sql_cli.py): these tests check what flokit sql asks
of it (the values, rows and widths shown, the empty result), not ClickHouse's drawing."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys

import pytest

from deploy import clickhouse

from .test_warehouse_schema import fresh_db, seed_world, settings_for
from .warehouse_process import start_warehouse, stop_warehouse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    proc, url = start_warehouse(tmp_path_factory.mktemp("warehouse"))
    database = fresh_db()
    client = clickhouse.connect(settings_for(url, database))
    seed_world(client, database)
    client.close()
    yield {**os.environ, "FLOKIT_CLICKHOUSE_URL": url, "FLOKIT_CLICKHOUSE_DATABASE": database}
    assert stop_warehouse(proc) == 0


def flokit_sql(env, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", "sql", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


TWO_EVENTS = (
    "SELECT event_id, event, user_id, plan_ids, price, timestamp FROM events_deduped "
    "WHERE workspace = 'acme' AND event_id IN ('evt_a1', 'evt_a2') ORDER BY event_id"
)


def cells(line: str) -> list[str]:
    """The values of one row of a PrettyCompact table."""
    return [cell.strip() for cell in line.strip("│").split("│")]


def test_table_output(env):
    lines = ok(flokit_sql(env, TWO_EVENTS)).splitlines()
    assert len(lines) == 4 and lines[0].startswith("┌─event_id─") and lines[-1].startswith("└")
    assert [name.strip("─") for name in lines[0].strip("┌┐").split("┬")] == [
        "event_id",
        "event",
        "user_id",
        "plan_ids",
        "price",
        "timestamp",
    ]
    assert cells(lines[1]) == [
        "evt_a1",
        "paywall_viewed",
        "ᴺᵁᴸᴸ",
        "['plan_annual','plan_monthly']",
        "ᴺᵁᴸᴸ",
        "2024-03-01 10:00:00.000",
    ]
    assert cells(lines[2]) == [
        "evt_a2",
        "trial_started",
        "usr_alice",
        "[]",
        "59.99",
        "2024-03-01 10:02:00.000",
    ]
    assert len({len(line) for line in lines}) == 1  # one block: every row lines up
    assert "\x1b[" not in "".join(lines)  # no colours when the output is not a terminal


def test_wide_values_are_cut_unless_asked(env):
    query = "SELECT repeat('x', 200) AS wide, 'a\\nb' AS multiline FROM numbers(2)"
    row = ok(flokit_sql(env, query)).splitlines()[1]
    assert cells(row)[0] == "x" * 60 + "⋯"
    assert cells(ok(flokit_sql(env, "--max-width", "10", query)).splitlines()[1])[0] == "x" * 10 + "⋯"
    assert cells(ok(flokit_sql(env, "--max-width", "0", query)).splitlines()[1])[0] == "x" * 200


def test_many_rows(env):
    out = ok(flokit_sql(env, "SELECT number, toString(number) AS s FROM numbers(2500)")).splitlines()
    assert out[-1] == "Showed 1000 out of 2500 rows."
    assert sum(line.startswith("│") for line in out) == 1000
    out = ok(flokit_sql(env, "--max-rows", "0", "SELECT number FROM numbers(2500)")).splitlines()
    assert len(out) == 1 + 2500 + 1 and out[-1].startswith("└")
    assert out[1] == "│      0 │" and out[-2] == "│   2499 │"  # numbers right-aligned
    assert ok(flokit_sql(env, "SELECT 1 AS one WHERE 0")).splitlines() == ["(0 rows)"]


def test_statements_the_embedded_warehouse_cannot_stream(env):
    # SHOW and EXPLAIN: flokit sql falls back to a buffered query when the server refuses to stream them.
    tables = ok(flokit_sql(env, "SHOW TABLES")).splitlines()
    assert tables[0].startswith("┌─name─") and ["events_resolved"] in [cells(line) for line in tables]
    assert sum(line.startswith("│") for line in tables) == 9
    assert {"name": "paywall_funnel"} in [
        json.loads(line) for line in ok(flokit_sql(env, "-f", "jsonl", "SHOW TABLES")).splitlines()
    ]


def test_csv_tsv_json_jsonl(env):
    rows = list(csv.reader(io.StringIO(ok(flokit_sql(env, "--format", "csv", TWO_EVENTS)))))
    assert rows[0] == ["event_id", "event", "user_id", "plan_ids", "price", "timestamp"]
    assert rows[1][:3] == ["evt_a1", "paywall_viewed", "\\N"] and rows[2][4] == "59.99" and len(rows) == 3

    tsv = ok(flokit_sql(env, "-f", "tsv", TWO_EVENTS)).splitlines()
    assert tsv[0].split("\t") == ["event_id", "event", "user_id", "plan_ids", "price", "timestamp"]
    assert tsv[2].split("\t")[:3] == ["evt_a2", "trial_started", "usr_alice"]

    doc = json.loads(ok(flokit_sql(env, "--format", "json", TWO_EVENTS)))
    assert [r["event_id"] for r in doc] == ["evt_a1", "evt_a2"]
    assert doc[0]["user_id"] is None and doc[0]["plan_ids"] == ["plan_annual", "plan_monthly"]
    assert doc[1]["price"] == 59.99 and doc[1]["timestamp"] == "2024-03-01 10:02:00.000"

    lines = ok(flokit_sql(env, "--format", "jsonl", TWO_EVENTS)).splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["paywall_viewed", "trial_started"]


def test_clickhouse_formats_pass_through(env):
    out = ok(flokit_sql(env, "-f", "Markdown", "SELECT 1 AS one, 'x' AS two"))
    assert out.splitlines()[0] == "| one | two |"


def test_query_from_stdin(env):
    out = ok(
        flokit_sql(env, "-", stdin="SELECT count() AS n FROM events_deduped WHERE workspace = 'acme';\n")
    )
    assert cells(out.splitlines()[1]) == ["29"]
    # No argument at all also reads stdin when it is not a terminal.
    assert ok(flokit_sql(env, "-f", "csv", stdin="SELECT 2 AS two")) == '"two"\n2\n'


def test_statements_without_a_result(env):
    assert ok(flokit_sql(env, "CREATE TABLE scratch (x Int32) ENGINE = Memory")).strip() == "Ok."
    assert ok(flokit_sql(env, "INSERT INTO scratch SELECT number FROM numbers(3)")).startswith("Ok.")
    assert ok(flokit_sql(env, "-f", "csv", "SELECT sum(x) FROM scratch")).splitlines()[1] == "3"


def test_query_errors_exit_1_with_clickhouse_message(env):
    done = flokit_sql(env, "SELECT count() FROM no_such_table")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("flokit sql: Code: 60. DB::Exception:") and "UNKNOWN_TABLE" in done.stderr
    assert "Traceback" not in done.stderr
    done = flokit_sql(env, "-f", "csv", "SELEC 1")
    assert done.returncode == 1 and "SYNTAX_ERROR" in done.stderr and "Traceback" not in done.stderr


def test_missing_database_hints_migrate(env):
    done = flokit_sql({**env, "FLOKIT_CLICKHOUSE_DATABASE": "not_migrated"}, "SELECT count() FROM events")
    assert done.returncode == 1 and "UNKNOWN_DATABASE" in done.stderr and "flokit migrate" in done.stderr


def test_unreachable_warehouse(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    url = f"http://analyst:secret@127.0.0.1:{port}"
    done = flokit_sql({**env, "FLOKIT_CLICKHOUSE_URL": url}, "SELECT 1")
    assert done.returncode == 1 and done.stdout == ""
    assert f"cannot reach the warehouse at http://analyst:***@127.0.0.1:{port}" in done.stderr
    assert (
        "flokit warehouse" in done.stderr and "secret" not in done.stderr and "Traceback" not in done.stderr
    )


def test_usage_errors_exit_2(env):
    assert flokit_sql(env, "  ;  ").returncode == 2
