"""The embedded warehouse, driven as its users drive it: clickhouse-connect (default client) and curl."""

from __future__ import annotations

import datetime as dt
import json
import socket
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

from deploy.warehouse.sql import insert_from_file

from .warehouse_process import start_warehouse, stop_warehouse

UTC = dt.UTC


@pytest.fixture(scope="module")
def warehouse_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("warehouse")


@pytest.fixture(scope="module")
def warehouse(warehouse_dir):
    proc, url = start_warehouse(warehouse_dir)
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
    done = subprocess.run(
        ["curl", "-sS", "--fail-with-body", *args, url], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def curl_response(url: str, *args: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of a curl request, whatever the status."""
    done = subprocess.run(["curl", "-sS", "-D", "-", *args, url], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.decode().partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    return int(status_line.split()[1]), dict(line.split(": ", 1) for line in lines), body


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
    return [
        [
            i,
            f"name-{i} ünïcode",
            ("view", "click", "buy")[i % 3],
            None if i % 4 == 0 else f"note {i}",
            start + dt.timedelta(milliseconds=7 * i),
            2**64 - 1 - i,
            i / 8,
            [f"t{i}", "shared"][: i % 3],
            {"source": "test", "n": str(i)} if i % 2 else {},
            json.dumps({"i": i, "nested": {"ok": True}}),
        ]
        for i in range(count)
    ]


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
    client.command(
        f"CREATE TABLE {table} (k UInt32, v String) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    block = [[1, "a"], [2, "b"], [3, "c"]]
    for _ in range(2):
        client.insert(
            table, block, column_names=["k", "v"], settings={"insert_deduplication_token": "batch-1"}
        )
    assert client.command(f"SELECT count() FROM {table}") == 3
    # The token, not the content, decides: new content under a used token is dropped, a new token is kept.
    client.insert(
        table, [[4, "d"]], column_names=["k", "v"], settings={"insert_deduplication_token": "batch-1"}
    )
    client.insert(
        table, [[4, "d"]], column_names=["k", "v"], settings={"insert_deduplication_token": "batch-2"}
    )
    assert client.query(f"SELECT groupArray(k) FROM (SELECT k FROM {table} ORDER BY k)").first_row[0] == [
        1,
        2,
        3,
        4,
    ]
    # The token is a per-request setting: it must not stick to the client's next insert.
    client.insert(table, [[5, "e"]], column_names=["k", "v"])
    client.insert(table, [[6, "f"]], column_names=["k", "v"])
    assert client.command(f"SELECT count() FROM {table}") == 6
    # Same through a URL parameter from curl.
    query = quote(f"INSERT INTO {table} FORMAT CSV")
    for _ in range(2):
        curl(f"{warehouse}/?query={query}&insert_deduplication_token=curl-1", "--data-binary", "7,g\n")
    assert client.command(f"SELECT count() FROM {table}") == 7


def test_dedup_token_covers_a_many_block_insert(client, database, warehouse, tmp_path):
    table = f"{database}.dedup_big"
    client.command(
        f"CREATE TABLE {table} (k UInt32, v String) ENGINE = MergeTree ORDER BY k "
        "SETTINGS non_replicated_deduplication_window = 100"
    )
    client.command(f"SYSTEM STOP MERGES {table}")
    first, other = tmp_path / "first.tsv", tmp_path / "other.tsv"
    first.write_text("".join(f"{i}\tx\n" for i in range(200_000)))
    other.write_text("".join(f"{i}\ty\n" for i in range(200_000)))  # same shape, other content

    def insert(body, token: str) -> None:
        curl(
            f"{warehouse}/?query={quote(f'INSERT INTO {table} FORMAT TSV')}"
            f"&insert_deduplication_token={token}"
            "&max_block_size=30000&min_insert_block_size_rows=30000&max_insert_block_size=30000",
            "--data-binary",
            f"@{body}",
        )

    insert(first, "big-1")
    parts = client.command(
        f"SELECT count() FROM system.parts WHERE database = '{database}' AND table = 'dedup_big' AND active"
    )
    assert parts > 1  # it really was more than one block
    insert(other, "big-1")  # every block's token was seen: all dropped
    assert client.query(f"SELECT count(), countIf(v = 'y') FROM {table}").first_row == (200_000, 0)
    insert(other, "big-2")
    assert client.query(f"SELECT count(), countIf(v = 'y') FROM {table}").first_row == (400_000, 200_000)


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
    request = urllib.request.Request(
        f"{warehouse}/?query={quote(f'INSERT INTO {table} FORMAT TSV')}",
        data=b"1\n2\nnot-a-number\n",
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as rejected:
        urllib.request.urlopen(request, timeout=30)
    assert rejected.value.code == 400 and rejected.value.headers["X-ClickHouse-Exception-Code"] == "27"
    assert b"(CANNOT_PARSE_INPUT_ASSERTION_FAILED)" in rejected.value.read()
    with pytest.raises(DatabaseError):
        client.insert(f"{database}.nowhere", [[1]], column_names=["n"], column_type_names=["UInt8"])
    assert client.command(f"SELECT count() FROM {table}") == 0


BOUNDED_DDL = """CREATE TABLE {table} (id UInt32, ts DateTime64(3, 'UTC'),
    CONSTRAINT ts_before_2200 CHECK ts < toDateTime64('2200-01-01 00:00:00', 3, 'UTC')
) ENGINE = MergeTree ORDER BY id"""


def test_insert_violating_a_constraint_is_an_error_and_stores_nothing(client, database, warehouse):
    # chdb's streaming inserter reports success for blocks that fail on their way to storage; the server
    # must not: the consumer dead-letters rows only when the insert fails.
    table = f"{database}.bounded"
    client.command(BOUNDED_DDL.format(table=table))
    start = dt.datetime(2024, 5, 1, tzinfo=UTC)
    rows = [[i, start + dt.timedelta(seconds=i)] for i in range(1000)]
    bad = rows + [[1000, dt.datetime(2250, 1, 1, tzinfo=UTC)]]
    with pytest.raises(DatabaseError) as violated:
        client.insert(table, bad, column_names=["id", "ts"])
    assert violated.value.code == 469 and "VIOLATED_CONSTRAINT" in str(violated.value)
    assert "ts_before_2200" in str(violated.value)
    assert client.command(f"SELECT count() FROM {table}") == 0

    query = quote(f"INSERT INTO {table} FORMAT JSONEachRow")
    status, headers, body = curl_response(
        f"{warehouse}/?query={query}",
        "--data-binary",
        '{"id": 1, "ts": "2024-05-01 00:00:00"}\n{"id": 2, "ts": "2250-01-01 00:00:00"}\n',
    )
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "469"
    assert (
        body.startswith("Code: 469. DB::Exception: Constraint `ts_before_2200`")
        and "(VIOLATED_CONSTRAINT)" in body
    )
    assert client.command(f"SELECT count() FROM {table}") == 0

    # A valid insert right after stores its rows, both ways.
    assert client.insert(table, rows, column_names=["id", "ts"]).written_rows == 1000
    curl(f"{warehouse}/?query={query}", "--data-binary", '{"id": 1000, "ts": "2199-12-31 23:59:59"}\n')
    assert client.query(f"SELECT count(), max(id) FROM {table}").first_row == (1001, 1000)


def test_other_storage_stage_errors_surface(client, database, warehouse):
    # Errors raised once a block goes to storage, other than constraints, are not lost either; and
    # per-request settings reach the insert.
    table = f"{database}.by_day"
    client.command(
        f"CREATE TABLE {table} (day UInt32, v String) ENGINE = MergeTree PARTITION BY day ORDER BY day"
    )
    rows = [[day, "x"] for day in range(5)]
    with pytest.raises(DatabaseError) as partitions:
        client.insert(table, rows, column_names=["day", "v"], settings={"max_partitions_per_insert_block": 3})
    assert partitions.value.code == 252 and "TOO_MANY_PARTS" in str(partitions.value)
    assert client.command(f"SELECT count() FROM {table}") == 0
    client.insert(table, rows, column_names=["day", "v"], settings={"max_partitions_per_insert_block": 5})
    assert client.command(f"SELECT count() FROM {table}") == 5

    # A materialized view failing on the inserted block.
    client.command(f"CREATE TABLE {database}.src (n UInt32) ENGINE = MergeTree ORDER BY n")
    client.command(f"CREATE TABLE {database}.dst (n UInt32) ENGINE = MergeTree ORDER BY n")
    client.command(
        f"CREATE MATERIALIZED VIEW {database}.mv TO {database}.dst AS "
        f"SELECT n + throwIf(n = 13, 'unlucky row') AS n FROM {database}.src"
    )
    with pytest.raises(DatabaseError) as thrown:
        client.insert(f"{database}.src", [[12], [13]], column_names=["n"])
    assert thrown.value.code == 395 and "unlucky row" in str(thrown.value)
    assert client.command(f"SELECT count() FROM {database}.dst") == 0


def test_insert_statement_forms(client, database, warehouse):
    table = f"{database}.forms"
    client.command(
        f"CREATE TABLE {table} (a UInt32, b String DEFAULT 'dflt', c UInt8 DEFAULT 7) "
        "ENGINE = MergeTree ORDER BY a"
    )
    # Column lists, in any order, and VALUES with expressions.
    curl(warehouse + "/", "--data-binary", f"INSERT INTO {table} (b, a) FORMAT CSV\none,1\n")
    curl(f"{warehouse}/?query={quote(f'INSERT INTO {table} (a) FORMAT TSV')}", "--data-binary", "2\n")
    curl(warehouse + "/", "--data-binary", f"INSERT INTO {table} (a, c) VALUES (3, 1 + 2), (4, 4)")
    # A SETTINGS clause in the statement applies, whether it allows or forbids.
    unknown_field = '{"a": 5, "nope": 1}\n'
    forbid = f"INSERT INTO {table} SETTINGS input_format_skip_unknown_fields = 0 FORMAT JSONEachRow"
    allow = f"INSERT INTO {table} SETTINGS input_format_skip_unknown_fields = 1 FORMAT JSONEachRow"
    status, headers, _ = curl_response(
        f"{warehouse}/?query={quote(forbid)}",
        "--data-binary",
        unknown_field,
    )
    assert status != 200 and headers["X-ClickHouse-Exception-Code"] == "117"
    curl(
        f"{warehouse}/?query={quote(allow)}",
        "--data-binary",
        unknown_field,
    )
    # So does one given as a URL parameter.
    status, headers, _ = curl_response(
        f"{warehouse}/?query={quote(f'INSERT INTO {table} FORMAT JSONEachRow')}"
        "&input_format_skip_unknown_fields=0",
        "--data-binary",
        unknown_field,
    )
    assert status != 200 and headers["X-ClickHouse-Exception-Code"] == "117"
    # The statement and data in one gzip-compressed body.
    query = f"INSERT INTO {table} (a, b) FORMAT TSV\n6\tsix\n".encode()
    gzipped = subprocess.run(["gzip", "-c"], input=query, capture_output=True, check=True).stdout
    request = urllib.request.Request(
        warehouse + "/", data=gzipped, method="POST", headers={"Content-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    assert client.query(f"SELECT a, b, c FROM {table} ORDER BY a").result_rows == [
        (1, "one", 7),
        (2, "dflt", 7),
        (3, "dflt", 3),
        (4, "dflt", 4),
        (5, "dflt", 7),
        (6, "six", 7),
    ]


def test_insert_from_file_goes_before_settings():
    assert (
        insert_from_file("INSERT INTO t (a, b) ", "'/f'", "CSV")
        == "INSERT INTO t (a, b) \nFROM INFILE '/f'\n\nFORMAT CSV"
    )
    assert (
        insert_from_file("INSERT INTO t SETTINGS x = 1, y = 'a' ", "'/f'", "TSV")
        == "INSERT INTO t \nFROM INFILE '/f'\nSETTINGS x = 1, y = 'a' \nFORMAT TSV"
    )
    # A table or column called `settings` is not the clause.
    assert (
        insert_from_file("INSERT INTO settings (settings) SETTINGS a=1", "'/f'", "CSV")
        == "INSERT INTO settings (settings) \nFROM INFILE '/f'\nSETTINGS a=1\nFORMAT CSV"
    )


def test_no_spool_files_are_left_behind(client, database, warehouse, warehouse_dir):
    data_dir = warehouse_dir / "warehouse"
    spool = data_dir / "tmp" / "http_inserts"
    assert spool.is_dir()
    table = f"{database}.spooled"
    client.command(BOUNDED_DDL.format(table=table))
    ok = dt.datetime(2024, 1, 1, tzinfo=UTC)
    client.insert(table, [[1, ok]], column_names=["id", "ts"])  # stored
    with pytest.raises(DatabaseError):  # storage-stage failure
        client.insert(table, [[2, dt.datetime(2300, 1, 1, tzinfo=UTC)]], column_names=["id", "ts"])
    query = quote(f"INSERT INTO {table} FORMAT TSV")
    # A parse error: the spool file stays internal.
    status, _, body = curl_response(f"{warehouse}/?query={query}", "--data-binary", "3\tnot a time\n")
    assert status == 400 and "http_inserts" not in body and "INFILE" not in body
    # An undecodable body.
    status, _, _ = curl_response(
        f"{warehouse}/?query={query}", "-H", "Content-Encoding: gzip", "--data-binary", "not gzip"
    )
    assert status != 200
    # A body cut short: the client announces more than it sends, then stops sending.
    parts = urlsplit(warehouse)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            f"POST /?query={query} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
            + ok.strftime("4\t%Y-%m-%d %H:%M:%S\n").encode()
        )
        sock.shutdown(socket.SHUT_WR)
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.1 500 ") and b"X-ClickHouse-Exception-Code: 33" in answer
    assert client.query(f"SELECT groupArray(id) FROM {table}").first_row == ([1],)
    assert list(spool.iterdir()) == []
    assert not [path for path in data_dir.rglob("insert-*")]


def test_curl_query_forms(client, database, warehouse):
    table = f"{database}.curl"
    curl(
        warehouse + "/",
        "--data-binary",
        f"CREATE TABLE {table} (a UInt32, b String) ENGINE = MergeTree ORDER BY a",
    )
    insert = quote(f"INSERT INTO {table} FORMAT JSONEachRow")
    curl(f"{warehouse}/?query={insert}", "--data-binary", '{"a": 1, "b": "one"}\n{"a": 2, "b": "two"}\n')
    curl(warehouse + "/", "--data-binary", f"INSERT INTO {table} FORMAT CSV\n3,three\n")
    curl(warehouse + "/", "--data-binary", f"INSERT INTO {table} VALUES (4, 'four')")
    # Query in the body, default TabSeparated.
    assert (
        curl(warehouse + "/", "--data-binary", f"SELECT a, b FROM {table} ORDER BY a")
        == "1\tone\n2\ttwo\n3\tthree\n4\tfour\n"
    )
    # Query in query=, FORMAT JSON.
    doc = json.loads(curl(f"{warehouse}/?query={quote(f'SELECT a, b FROM {table} ORDER BY a FORMAT JSON')}"))
    assert doc["data"] == [
        {"a": 1, "b": "one"},
        {"a": 2, "b": "two"},
        {"a": 3, "b": "three"},
        {"a": 4, "b": "four"},
    ]
    assert doc["meta"] == [{"name": "a", "type": "UInt32"}, {"name": "b", "type": "String"}]
    # database= makes unqualified names resolve there; default_format applies without a FORMAT clause.
    assert (
        curl(
            f"{warehouse}/?database={database}&default_format=JSONEachRow",
            "--data-binary",
            "SELECT count() AS n FROM curl",
        )
        == '{"n":4}\n'
    )
    # Server-side parameters.
    assert (
        curl(f"{warehouse}/?query={quote('SELECT {x:UInt8} * 2, {s:String}')}&param_x=21&param_s=it%27s")
        == "42\tit\\'s\n"
    )
    # Compressed response when asked for, as clickhouse-connect and `curl --compressed` do.
    assert (
        curl(
            f"{warehouse}/?enable_http_compression=1&query={quote('SELECT number FROM numbers(3)')}",
            "--compressed",
        )
        == "0\n1\n2\n"
    )
    # Statements that are not plain SELECTs.
    assert curl(warehouse + "/", "--data-binary", f"EXISTS TABLE {table}") == "1\n"
    assert curl(warehouse + "/", "--data-binary", f"DESCRIBE TABLE {table} FORMAT TSV").startswith(
        "a\tUInt32"
    )
    headers = curl(f"{warehouse}/?query={quote('SELECT 1')}", "-D", "-", "-o", "/dev/null")
    assert "X-ClickHouse-Format: TabSeparated" in headers and "X-ClickHouse-Summary: {" in headers


def test_get_is_readonly_like_clickhouse(warehouse):
    status, headers, body = http_get(f"{warehouse}/?query={quote('CREATE DATABASE never_made')}")
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "164"


def test_streamed_results_and_mid_stream_errors(client):
    with client.query_row_block_stream("SELECT number, toString(number) FROM numbers(300000)") as stream:
        assert sum(len(block) for block in stream) == 300_000
    with pytest.raises(DatabaseError) as failure:
        with client.query_row_block_stream(
            "SELECT throwIf(number = 200000, 'late failure') FROM numbers(400000) "
            "SETTINGS max_block_size = 10000"
        ) as stream:
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
