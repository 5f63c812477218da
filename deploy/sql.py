"""`flokit sql`: run one query against the warehouse (FLOKIT_CLICKHOUSE_URL) and print the result.

    flokit sql "SELECT event, count() FROM events_deduped GROUP BY event"
    flokit sql --format csv "SELECT ..." > out.csv
    echo "SELECT 1" | flokit sql -

The default `table` output is for people: aligned columns under their names, NULL spelled out, arrays
and maps as JSON, long values cut at --max-width, at most --max-rows rows, then a row count line.
`csv`, `tsv`, `json` (one array of row objects) and `jsonl` (an object per line) are for scripts and
stream straight from ClickHouse; any other --format value is passed to ClickHouse as an output format
name (Parquet, Markdown, Vertical, PrettyCompact, ...). The default database is FLOKIT_CLICKHOUSE_DATABASE,
so `FROM events_resolved` needs no prefix. Exit status: 0 done, 1 query failed or warehouse unreachable,
2 usage.
"""
from __future__ import annotations

import logging
import math
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Iterable, TextIO

import orjson

# --format value -> (ClickHouse output format, extra settings).
SCRIPT_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "csv": ("CSVWithNames", {}),
    "tsv": ("TabSeparatedWithNames", {}),
    # Buffered (wait_end_of_query) so an empty result is still a whole JSON array: a streamed empty
    # result has no body at all.
    "json": ("JSONEachRow", {"output_format_json_array_of_rows": 1, "wait_end_of_query": 1}),
    "jsonl": ("JSONEachRow", {}),
}
FORMATS_HELP = "table (default), csv, tsv, json, jsonl, or a ClickHouse output format name (passed through)"
DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_WIDTH = 60
_ESCAPES = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def add_arguments(parser) -> None:
    parser.add_argument("query", nargs="?", default="-", help='the SQL, or "-" (the default) to read it from stdin')
    parser.add_argument("-f", "--format", default="table", metavar="FORMAT", help=FORMATS_HELP)
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, metavar="N",
                        help=f"table format: show at most N rows (default {DEFAULT_MAX_ROWS}; 0: all)")
    parser.add_argument("--max-width", type=int, default=DEFAULT_MAX_WIDTH, metavar="N",
                        help=f"table format: cut values longer than N characters (default {DEFAULT_MAX_WIDTH}; 0: never)")


def run(args, settings, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

    from .clickhouse import WarehouseUnreachable, clickhouse_message, connect, describe_url

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)  # its retry warnings; we say it better
    query = args.query
    if query == "-":
        if stdin.isatty():
            print('flokit sql: give the query as an argument, or pipe it in: echo "SELECT 1" | flokit sql -',
                  file=stderr)
            return 2
        query = stdin.read()
    query = _strip_query(query)
    if not query:
        print("flokit sql: the query is empty", file=stderr)
        return 2
    fmt = args.format.strip()
    try:
        client = connect(settings)
    except WarehouseUnreachable as exc:
        print(f"flokit sql: {exc}", file=stderr)
        return 1
    except DatabaseError as exc:  # e.g. bad credentials
        print(f"flokit sql: {clickhouse_message(exc)}", file=stderr)
        return 1
    try:
        if _is_command(client, query):
            _print_command(client.command(query), stdout)
        elif fmt.lower() == "table":
            _print_table(client, query, stdout, args.max_rows, args.max_width)
        else:
            ch_format, extra = SCRIPT_FORMATS.get(fmt.lower(), (fmt, {}))
            _copy_raw(client, query, ch_format, extra, stdout)
    except DatabaseError as exc:
        stdout.flush()
        print(f"flokit sql: {clickhouse_message(exc)}{_hint(exc, settings)}", file=stderr)
        return 1
    except OperationalError as exc:
        stdout.flush()
        print(f"flokit sql: lost the warehouse at {describe_url(settings.warehouse_url)}: {clickhouse_message(exc)}",
              file=stderr)
        return 1
    except ClickHouseError as exc:  # the client's own errors (e.g. a value it cannot decode)
        stdout.flush()
        print(f"flokit sql: {exc}", file=stderr)
        return 1
    except BrokenPipeError:  # `flokit sql ... | head`
        _silence(stdout)
        return 0
    except KeyboardInterrupt:
        print("flokit sql: interrupted", file=stderr)
        return 130
    finally:
        client.close()
    return 0


def _hint(exc: BaseException, settings) -> str:
    if "UNKNOWN_DATABASE" in str(exc):
        return f"\n  Create the tables with `flokit migrate` (database {settings.clickhouse_database!r})."
    return ""


def _strip_query(query: str) -> str:
    query = query.strip()
    while query.endswith(";"):
        query = query[:-1].rstrip()
    return query


def _silence(stdout) -> None:
    import os
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# -- script formats ----------------------------------------------------------------------------------------


def _unstreamable(exc: BaseException) -> bool:
    """The embedded warehouse cannot stream some statements (SHOW, EXPLAIN, ...) block by block; it runs them
    when asked to wait for the end of the query. A real ClickHouse server never says this."""
    return "Streaming query is not supported" in str(exc)


def _copy_raw(client, query: str, fmt: str, settings: dict[str, Any], stdout) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    out = getattr(stdout, "buffer", None)
    write = out.write if out is not None else (lambda chunk: stdout.write(chunk.decode("utf-8", "replace")))
    try:
        with client.raw_stream(query, fmt=fmt, settings=settings or None) as stream:
            for chunk in stream:
                write(chunk)
    except DatabaseError as exc:
        if not _unstreamable(exc):
            raise
        write(client.raw_query(query, fmt=fmt, settings={**settings, "wait_end_of_query": 1}))
    (out or stdout).flush()


def _is_command(client, query: str) -> bool:
    """A statement without a result set: clickhouse-connect's list (CREATE, ALTER, SYSTEM, ...) and INSERT."""
    if client.create_query_context(query=query).is_command:
        return True
    return query.lstrip("( \t\r\n").split(None, 1)[0].upper() == "INSERT"


def _print_command(result, stdout) -> None:
    from clickhouse_connect.driver.summary import QuerySummary
    if isinstance(result, QuerySummary):
        written = result.written_rows
        print(f"Ok. {written} row{'s' if written != 1 else ''} written." if written else "Ok.", file=stdout)
    elif isinstance(result, (list, tuple)):
        print("\t".join(map(str, result)), file=stdout)
    else:
        print(result if str(result) else "Ok.", file=stdout)


# -- the table format --------------------------------------------------------------------------------------


def _print_table(client, query: str, stdout, max_rows: int, max_width: int) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    rows: list[tuple] = []
    more = False
    try:
        # Streamed, so that only the rows shown are fetched (the rest of the result is not read).
        with client.query_row_block_stream(query) as stream:
            names = list(stream.source.column_names)
            types = [t.name for t in stream.source.column_types]
            for block in stream:
                for row in block:
                    if max_rows and len(rows) >= max_rows:
                        more = True
                        break
                    rows.append(row)
                if more:
                    break
    except DatabaseError as exc:
        if not _unstreamable(exc):
            raise
        result = client.query(query)
        names, types = list(result.column_names), [t.name for t in result.column_types]
        rows = list(result.result_rows)
        more = bool(max_rows) and len(rows) > max_rows
        rows = rows[:max_rows] if max_rows else rows
    if not names:
        # An empty result may come without its header block (the embedded warehouse sends none in Native):
        # ask for the result's structure, which runs nothing.
        names, types = _describe(client, query)
    stdout.write(render_table(names, types, rows, max_width))
    count = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
    if more:
        print(f"(first {count} shown; the query returned more: add a LIMIT, raise --max-rows, "
              "or use --format csv)", file=stdout)
    else:
        print(f"({count})", file=stdout)
    stdout.flush()


def _describe(client, query: str) -> tuple[list[str], list[str]]:
    try:
        described = client.query(f"DESCRIBE ({query})").result_rows
    except Exception:  # not a SELECT (SHOW, EXPLAIN, ...): no header then
        return [], []
    return [row[0] for row in described], [row[1] for row in described]


def render_table(names: list[str], types: list[str], rows: Iterable[tuple], max_width: int = DEFAULT_MAX_WIDTH) -> str:
    """Rows as aligned text columns under their names (numbers right-aligned); ends with a newline."""
    if not names:
        return ""
    cells = [[format_value(value, kind, max_width) for value, kind in zip(row, types)] for row in rows]
    headers = [_cut(name, max_width) for name in names]
    widths = [max([len(headers[i])] + [len(row[i]) for row in cells]) for i in range(len(names))]
    right = [_is_numeric(kind) for kind in types]
    lines = ["  ".join(h.rjust(w) if r else h.ljust(w) for h, w, r in zip(headers, widths, right)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for row in cells:
        lines.append("  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)).rstrip())
    return "\n".join(lines) + "\n"


def _is_numeric(kind: str) -> bool:
    inner = kind
    for wrapper in ("LowCardinality(", "Nullable("):
        if inner.startswith(wrapper):
            inner = inner[len(wrapper):-1]
    return inner.startswith(("UInt", "Int", "Float", "Decimal", "BFloat"))


def format_value(value: Any, kind: str = "", max_width: int = DEFAULT_MAX_WIDTH) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = str(value) if math.isnan(value) or math.isinf(value) else f"{value:.15g}"
    elif isinstance(value, (int, Decimal)):
        text = str(value)
    elif isinstance(value, datetime):
        text = _format_datetime(value, kind)
    elif isinstance(value, date):
        text = value.isoformat()
    elif isinstance(value, str):
        text = value.translate(_ESCAPES)
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace").translate(_ESCAPES)
    elif isinstance(value, (list, tuple, dict)):
        text = orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    else:
        text = str(value)
    return _cut(text, max_width)


def _json_default(value: Any):
    if isinstance(value, (datetime, date)):
        return _format_datetime(value, "") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, (Decimal,)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _format_datetime(value: datetime, kind: str) -> str:
    precision = 0
    if "DateTime64(" in kind:
        try:
            precision = int(kind.split("DateTime64(", 1)[1].split(",")[0].split(")")[0])
        except ValueError:
            precision = 3
    elif value.microsecond:
        precision = 6
    text = value.strftime("%Y-%m-%d %H:%M:%S")
    if precision:
        text += f".{value.microsecond:06d}"[: precision + 1]
    return text


def _cut(text: str, max_width: int) -> str:
    if max_width and len(text) > max_width:
        return text[: max(1, max_width - 1)] + "…"
    return text
