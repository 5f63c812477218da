"""The embedded warehouse, driven as its users drive it: clickhouse-connect (default client) and curl."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote, urlsplit

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from .warehouse_process import start_warehouse, stop_warehouse

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    proc, url = start_warehouse(tmp_path_factory.mktemp("warehouse"))
    yield url
    assert stop_warehouse(proc) == 0


def connect(url: str, **kwargs):
    parts = urlsplit(url)
    return clickhouse_connect.get_client(host=parts.hostname, port=parts.port, **kwargs)


@pytest.fixture(scope="module")
def client(warehouse):
    client = connect(warehouse)
    yield client
    client.close()


@pytest.fixture
def database(client):
    name = f"db_{uuid.uuid4().hex[:8]}"
    client.command(f"CREATE DATABASE {name}")
    return name


def curl(url: str, *args: str) -> str:
    done = subprocess.run(["curl", "-sS", "--fail-with-body", *args, url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def http_get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_ping_and_root(warehouse):
    assert http_get(warehouse + "/ping")[::2] == (200, b"Ok.\n")
    assert http_get(warehouse + "/")[::2] == (200, b"Ok.\n")
    assert connect(warehouse).ping()


def test_client_connects_like_to_a_server(client):
    # The connect-time probes (version/timezone, system.settings) succeeded and were understood.
    assert client.server_version.count(".") == 3
    assert client.server_settings["max_threads"].value
    assert client.command("SELECT 1") == 1


EVENT_COLUMNS = ["id", "name", "kind", "note", "ts", "big", "score", "tags", "attrs", "payload"]
EVENT_DDL = """CREATE TABLE {table} (
    id UInt32, name String, kind LowCardinality(String), note Nullable(String), ts DateTime64(3, 'UTC'),
    big UInt64, score Float64, tags Array(String), attrs Map(String, String), payload String
) ENGINE = MergeTree ORDER BY id"""


def event_rows(count: int) -> list[list]:
    start = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [[i, f"name-{i} ünïcode", ("view", "click", "buy")[i % 3], None if i % 4 == 0 else f"note {i}",
             start + dt.timedelta(milliseconds=7 * i), 2**64 - 1 - i, i / 8, [f"t{i}", "shared"][: i % 3],
             {"source": "test", "n": str(i)} if i % 2 else {}, json.dumps({"i": i, "nested": {"ok": True}})]
            for i in range(count)]


def test_insert_then_query_returns_exactly_the_rows(client, database):
    table = f"{database}.events"
    client.command(EVENT_DDL.format(table=table))
    rows = event_rows(500)
    summary = client.insert(table, rows, column_names=EVENT_COLUMNS)
    assert summary.written_rows == 500
    result = client.query(f"SELECT {', '.join(EVENT_COLUMNS)} FROM {table} ORDER BY id")
    assert result.column_names == tuple(EVENT_COLUMNS)
    got = [list(row) for row in result.result_rows]
    for row in got:
        row[4] = row[4].replace(tzinfo=UTC)  # DateTime64 'UTC' comes back naive UTC by default
    assert got == rows


def test_large_insert_spans_many_blocks(client, database):
    table = f"{database}.big"
    client.command(EVENT_DDL.format(table=table))
    rows = event_rows(50_000)
    assert client.insert(table, rows, column_names=EVENT_COLUMNS).written_rows == 50_000
    count, ids, nulls = client.query(f"SELECT count(), sum(id), countIf(note IS NULL) FROM {table}").first_row
    assert (count, ids, nulls) == (50_000, sum(range(50_000)), 12_500)


def test_dedup_token_stores_a_repeated_block_once(client, database, warehouse):
    table = f"{database}.dedup"
    client.command(f"CREATE TABLE {table} (k UInt32, v String) ENGINE = MergeTree ORDER BY k "
                   "SETTINGS non_replicated_deduplication_window = 100")
    block = [[1, "a"], [2, "b"], [3, "c"]]
    for _ in range(2):
        client.insert(table, block, column_names=["k", "v"], settings={"insert_deduplication_token": "batch-1"})
    assert client.command(f"SELECT count() FROM {table}") == 3
    # The token, not the content, decides: new content under a used token is dropped, a new token is kept.
    client.insert(table, [[4, "d"]], column_names=["k", "v"], settings={"insert_deduplication_token": "batch-1"})
    client.insert(table, [[4, "d"]], column_names=["k", "v"], settings={"insert_deduplication_token": "batch-2"})
    assert client.query(f"SELECT groupArray(k) FROM (SELECT k FROM {table} ORDER BY k)").first_row[0] == [1, 2, 3, 4]
    # The token is a per-request setting: it must not stick to the client's next insert.
    client.insert(table, [[5, "e"]], column_names=["k", "v"])
    client.insert(table, [[6, "f"]], column_names=["k", "v"])
    assert client.command(f"SELECT count() FROM {table}") == 6
    # Same through a URL parameter from curl.
    query = quote(f"INSERT INTO {table} FORMAT CSV")
    for _ in range(2):
        curl(f"{warehouse}/?query={query}&insert_deduplication_token=curl-1", "--data-binary", "7,g\n")
    assert client.command(f"SELECT count() FROM {table}") == 7


def test_bad_query_raises_database_error_and_server_keeps_serving(client, warehouse):
    with pytest.raises(DatabaseError) as unknown_table:
        client.query("SELECT * FROM default.no_such_table")
    assert unknown_table.value.code == 60
    assert "UNKNOWN_TABLE" in str(unknown_table.value)
    with pytest.raises(DatabaseError) as syntax:
        client.command("SELEKT 1")
    assert syntax.value.code == 62 and "Syntax error" in str(syntax.value)
    with pytest.raises(DatabaseError) as thrown:
        client.query("SELECT throwIf(1, 'deliberate failure')")
    assert thrown.value.code == 395 and "deliberate failure" in str(thrown.value)
    status, headers, body = http_get(f"{warehouse}/?query={quote('SELECT * FROM nowhere')}")
    assert status == 404 and headers["X-ClickHouse-Exception-Code"] == "60"
    assert body.startswith(b"Code: 60. DB::Exception: ") and b"(UNKNOWN_TABLE) (version " in body
    assert client.command("SELECT 41 + 1") == 42


def test_bad_insert_data_is_rejected_whole(client, database, warehouse):
    table = f"{database}.strict"
    client.command(f"CREATE TABLE {table} (n UInt8) ENGINE = MergeTree ORDER BY n")
    request = urllib.request.Request(f"{warehouse}/?query={quote(f'INSERT INTO {table} FORMAT TSV')}",
                                     data=b"1\n2\nnot-a-number\n", method="POST")
    with pytest.raises(urllib.error.HTTPError) as rejected:
        urllib.request.urlopen(request, timeout=30)
    assert rejected.value.code == 400 and rejected.value.headers["X-ClickHouse-Exception-Code"] == "27"
    assert b"(CANNOT_PARSE_INPUT_ASSERTION_FAILED)" in rejected.value.read()
    with pytest.raises(DatabaseError):
        client.insert(f"{database}.nowhere", [[1]], column_names=["n"], column_type_names=["UInt8"])
    assert client.command(f"SELECT count() FROM {table}") == 0


def test_curl_query_forms(client, database, warehouse):
    table = f"{database}.curl"
    curl(warehouse + "/", "--data-binary", f"CREATE TABLE {table} (a UInt32, b String) ENGINE = MergeTree ORDER BY a")
    insert = quote(f"INSERT INTO {table} FORMAT JSONEachRow")
    curl(f"{warehouse}/?query={insert}", "--data-binary", '{"a": 1, "b": "one"}\n{"a": 2, "b": "two"}\n')
    curl(warehouse + "/", "--data-binary", f"INSERT INTO {table} FORMAT CSV\n3,three\n")
    curl(warehouse + "/", "--data-binary", f"INSERT INTO {table} VALUES (4, 'four')")
    # Query in the body, default TabSeparated.
    assert curl(warehouse + "/", "--data-binary", f"SELECT a, b FROM {table} ORDER BY a") == \
        "1\tone\n2\ttwo\n3\tthree\n4\tfour\n"
    # Query in query=, FORMAT JSON.
    doc = json.loads(curl(f"{warehouse}/?query={quote(f'SELECT a, b FROM {table} ORDER BY a FORMAT JSON')}"))
    assert doc["data"] == [{"a": 1, "b": "one"}, {"a": 2, "b": "two"}, {"a": 3, "b": "three"}, {"a": 4, "b": "four"}]
    assert doc["meta"] == [{"name": "a", "type": "UInt32"}, {"name": "b", "type": "String"}]
    # database= makes unqualified names resolve there; default_format applies without a FORMAT clause.
    assert curl(f"{warehouse}/?database={database}&default_format=JSONEachRow", "--data-binary",
                "SELECT count() AS n FROM curl") == '{"n":4}\n'
    # Server-side parameters.
    assert curl(f"{warehouse}/?query={quote('SELECT {x:UInt8} * 2, {s:String}')}&param_x=21&param_s=it%27s") == \
        "42\tit\\'s\n"
    # Compressed response when asked for, as clickhouse-connect and `curl --compressed` do.
    assert curl(f"{warehouse}/?enable_http_compression=1&query={quote('SELECT number FROM numbers(3)')}",
                "--compressed") == "0\n1\n2\n"
    # Statements that are not plain SELECTs.
    assert curl(warehouse + "/", "--data-binary", f"EXISTS TABLE {table}") == "1\n"
    assert curl(warehouse + "/", "--data-binary", f"DESCRIBE TABLE {table} FORMAT TSV").startswith("a\tUInt32")
    headers = curl(f"{warehouse}/?query={quote('SELECT 1')}", "-D", "-", "-o", "/dev/null")
    assert "X-ClickHouse-Format: TabSeparated" in headers and "X-ClickHouse-Summary: {" in headers


def test_get_is_readonly_like_clickhouse(warehouse):
    status, headers, body = http_get(f"{warehouse}/?query={quote('CREATE DATABASE never_made')}")
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "164"


def test_streamed_results_and_mid_stream_errors(client):
    with client.query_row_block_stream("SELECT number, toString(number) FROM numbers(300000)") as stream:
        assert sum(len(block) for block in stream) == 300_000
    with pytest.raises(DatabaseError) as failure:
        with client.query_row_block_stream("SELECT throwIf(number = 200000, 'late failure') FROM numbers(400000) "
                                           "SETTINGS max_block_size = 10000") as stream:
            for _ in stream:
                pass
    assert "late failure" in str(failure.value)
    assert client.command("SELECT 2") == 2


def test_form_encoded_parameters_and_sessions(warehouse):
    client = connect(warehouse, form_encode_query_params=True)
    assert client.query("SELECT {n:UInt32} + 1", parameters={"n": 41}).first_row == (42,)
    client.command("SET max_threads = 3")  # session state, like a ClickHouse HTTP session
    assert client.command("SELECT getSetting('max_threads')") == 3
    assert connect(warehouse).command("SELECT getSetting('max_threads')") != 3  # other sessions unaffected


def test_two_clients_query_concurrently(warehouse):
    clients = [connect(warehouse), connect(warehouse)]
    results, errors = {}, []

    def work(n: int) -> None:
        try:
            results[n] = clients[n].query(f"SELECT sleep(1), {n}").first_row[1]
            for i in range(20):
                assert clients[n].command(f"SELECT {n * 100 + i}") == n * 100 + i
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == {0: 0, 1: 1}
    assert time.monotonic() - started < 1.9  # the two one-second sleeps overlapped


def test_sigterm_finishes_in_flight_queries_exits_0_and_data_survives_restart(tmp_path):
    proc, url = start_warehouse(tmp_path)
    try:
        client = connect(url)
        client.command("CREATE TABLE kept (k UInt32, v String) ENGINE = MergeTree ORDER BY k")
        client.insert("kept", [[1, "x"], [2, "y"]], column_names=["k", "v"])
        in_flight = []
        slow = threading.Thread(target=lambda: in_flight.append(connect(url).command("SELECT sleep(1.5), 7")))
        slow.start()
        time.sleep(0.5)
    finally:
        assert stop_warehouse(proc) == 0
    slow.join()
    assert in_flight == [["0", "7"]]
    proc, url = start_warehouse(tmp_path)
    try:
        assert connect(url).query("SELECT k, v FROM kept ORDER BY k").result_rows == [(1, "x"), (2, "y")]
    finally:
        assert stop_warehouse(proc) == 0
