"""`flokit sql`, run as analysts run it: a subprocess with FLOKIT_CLICKHOUSE_URL pointing at a warehouse."""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
from datetime import datetime

import pytest

from deploy.sql import format_value, render_table
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
    return subprocess.run([sys.executable, "-m", "deploy.cli", "sql", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


TWO_EVENTS = ("SELECT event_id, event, user_id, plan_ids, price, timestamp FROM events_deduped "
              "WHERE workspace = 'acme' AND event_id IN ('evt_a1', 'evt_a2') ORDER BY event_id")


def test_table_output(env):
    lines = ok(flokit_sql(env, TWO_EVENTS)).splitlines()
    assert lines == [
        "event_id  event           user_id    plan_ids                        price  timestamp",
        "--------  --------------  ---------  ------------------------------  -----  -----------------------",
        'evt_a1    paywall_viewed  NULL       ["plan_annual","plan_monthly"]   NULL  2024-03-01 10:00:00.000',
        "evt_a2    trial_started   usr_alice  []                              59.99  2024-03-01 10:02:00.000",
        "(2 rows)",
    ]


def test_wide_values_are_cut_unless_asked(env):
    query = "SELECT repeat('x', 200) AS wide, 'a\\nb' AS multiline"
    lines = ok(flokit_sql(env, query)).splitlines()
    assert lines[2] == "x" * 59 + "…  a\\nb"
    assert lines[-1] == "(1 row)"
    assert ok(flokit_sql(env, "--max-width", "0", query)).splitlines()[2].startswith("x" * 200 + "  ")


def test_many_rows(env):
    out = ok(flokit_sql(env, "SELECT number, toString(number) AS s FROM numbers(2500)")).splitlines()
    assert len(out) == 2 + 1000 + 1
    assert out[-1].startswith("(first 1000 rows shown; the query returned more")
    out = ok(flokit_sql(env, "--max-rows", "0", "SELECT number FROM numbers(2500)")).splitlines()
    assert len(out) == 2 + 2500 + 1 and out[-1] == "(2500 rows)"
    assert out[2] == "     0" and out[-2] == "  2499"  # numbers right-aligned under the header
    assert ok(flokit_sql(env, "SELECT 1 AS one WHERE 0")).splitlines() == ["one", "---", "(0 rows)"]


def test_statements_the_embedded_warehouse_cannot_stream(env):
    # SHOW and EXPLAIN: flokit sql falls back to a buffered query when the server refuses to stream them.
    tables = ok(flokit_sql(env, "SHOW TABLES")).splitlines()
    assert tables[0] == "name" and "events_resolved" in tables and tables[-1] == "(9 rows)"
    assert {"name": "paywall_funnel"} in [json.loads(line) for line in
                                          ok(flokit_sql(env, "-f", "jsonl", "SHOW TABLES")).splitlines()]


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
    out = ok(flokit_sql(env, "-", stdin="SELECT count() AS n FROM events_deduped WHERE workspace = 'acme';\n"))
    assert out.splitlines() == [" n", "--", "29", "(1 row)"]
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
    assert "flokit warehouse" in done.stderr and "secret" not in done.stderr and "Traceback" not in done.stderr


def test_usage_errors_exit_2(env):
    assert flokit_sql(env, "  ;  ").returncode == 2


def test_format_value():
    assert format_value(None) == "NULL"
    assert format_value(True) == "true"
    assert format_value(0.1 + 0.2) == "0.3" and format_value(1e20) == "1e+20" and format_value(59.0) == "59"
    assert format_value(datetime(2024, 3, 1, 10, 0), "DateTime64(3, 'UTC')") == "2024-03-01 10:00:00.000"
    assert format_value(datetime(2024, 3, 1, 10, 0), "DateTime") == "2024-03-01 10:00:00"
    assert format_value(["a", None, [1, 2]]) == '["a",null,[1,2]]'
    assert format_value({"k": (1, "x")}) == '{"k":[1,"x"]}'
    assert format_value("tab\there") == "tab\\there"
    assert format_value("x" * 10, max_width=5) == "xxxx…"


def test_render_table_alignment():
    text = render_table(["name", "n"], ["String", "Nullable(Int64)"], [("a", 1), ("bbb", None), ("cc", 1234)])
    assert text.splitlines() == ["name     n", "----  ----", "a        1", "bbb   NULL", "cc    1234"]
