"""`flokit sql`: run one query against the warehouse (FLOKIT_CLICKHOUSE_URL) and print the result.

    flokit sql "SELECT event, count() FROM events_deduped GROUP BY event"
    flokit sql --format csv "SELECT ..." > out.csv
    echo "SELECT 1" | flokit sql -

The default `table` output is for people: ClickHouse's own PrettyCompact table (one block, so the columns
line up over every row shown), long values cut at --max-width, at most --max-rows rows (ClickHouse says how
many there were), "(0 rows)" for an empty result. `csv`, `tsv`, `json` (one array of row objects) and
`jsonl` (an object per line) are for scripts; any other --format value is passed to ClickHouse as an output
format name (Parquet, Markdown, Vertical, ...). Every format streams straight from ClickHouse. The default
database is FLOKIT_CLICKHOUSE_DATABASE, so `FROM events_resolved` needs no prefix. Exit status: 0 done, 1
query failed or warehouse unreachable, 2 usage.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

# --format value -> (ClickHouse output format, extra settings).
SCRIPT_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "csv": ("CSVWithNames", {}),
    "tsv": ("TabSeparatedWithNames", {}),
    # Buffered (wait_end_of_query) so an empty result is still a whole JSON array: a streamed empty
    # result has no body at all.
    "json": ("JSONEachRow", {"output_format_json_array_of_rows": 1, "wait_end_of_query": 1}),
    "jsonl": ("JSONEachRow", {}),
}
TABLE_FORMAT = "PrettyCompactMonoBlock"
FORMATS_HELP = "table (default), csv, tsv, json, jsonl, or a ClickHouse output format name (passed through)"
DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_WIDTH = 60
# ClickHouse's "no limit" for the two: its settings take 0 as zero rows and zero characters.
_UNLIMITED = 1 << 40


def add_arguments(parser) -> None:
    parser.add_argument(
        "query", nargs="?", default="-", help='the SQL, or "-" (the default) to read it from stdin'
    )
    parser.add_argument("-f", "--format", default="table", metavar="FORMAT", help=FORMATS_HELP)
    parser.add_argument(
        "--max-rows",
        type=int,
        default=DEFAULT_MAX_ROWS,
        metavar="N",
        help=f"table format: show at most N rows (default {DEFAULT_MAX_ROWS}; 0: all)",
    )
    parser.add_argument(
        "--max-width",
        type=int,
        default=DEFAULT_MAX_WIDTH,
        metavar="N",
        help=f"table format: cut values longer than N characters (default {DEFAULT_MAX_WIDTH}; 0: never)",
    )


def run(
    args, settings, stdin: TextIO | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

    from .clickhouse import WarehouseUnreachable, clickhouse_message, connect, describe_url

    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)  # its retry warnings; we say it better
    query = args.query
    if query == "-":
        if stdin.isatty():
            print(
                'flokit sql: give the query as an argument, or pipe it in: echo "SELECT 1" | flokit sql -',
                file=stderr,
            )
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
            shown = table_settings(client, args.max_rows, args.max_width, stdout)
            if not _copy_raw(client, query, TABLE_FORMAT, shown, stdout):
                print("(0 rows)", file=stdout)
        else:
            ch_format, extra = SCRIPT_FORMATS.get(fmt.lower(), (fmt, {}))
            _copy_raw(client, query, ch_format, extra, stdout)
    except DatabaseError as exc:
        stdout.flush()
        print(f"flokit sql: {clickhouse_message(exc)}{_hint(exc, settings)}", file=stderr)
        return 1
    except OperationalError as exc:
        stdout.flush()
        print(
            f"flokit sql: lost the warehouse at {describe_url(settings.warehouse_url)}: "
            f"{clickhouse_message(exc)}",
            file=stderr,
        )
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


# -- output ----------------------------------------------------------------------------------------------


def _unstreamable(exc: BaseException) -> bool:
    """The embedded warehouse cannot stream some statements (SHOW, EXPLAIN, ...) block by block; it runs them
    when asked to wait for the end of the query. A real ClickHouse server never says this."""
    return "Streaming query is not supported" in str(exc)


def _copy_raw(client, query: str, fmt: str, settings: dict[str, Any], stdout) -> bool:
    """The result in `fmt`, from ClickHouse to stdout as it comes; whether there was any."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    out = getattr(stdout, "buffer", None)
    write = out.write if out is not None else (lambda chunk: stdout.write(chunk.decode("utf-8", "replace")))
    written = 0
    try:
        with client.raw_stream(query, fmt=fmt, settings=settings or None) as stream:
            for chunk in stream:
                write(chunk)
                written += len(chunk)
    except DatabaseError as exc:
        if not _unstreamable(exc):
            raise
        chunk = client.raw_query(query, fmt=fmt, settings={**settings, "wait_end_of_query": 1})
        write(chunk)
        written += len(chunk)
    (out or stdout).flush()
    return written > 0


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


def table_settings(client, max_rows: int, max_width: int, stdout) -> dict[str, Any]:
    """How ClickHouse draws the `table` output: rows and widths as asked, no row numbers, a table even when
    it is wide (ClickHouse would switch a wide one to Vertical), colours only on a terminal. Settings this
    server does not have (an older version) are left out rather than refused."""
    wanted = {
        "output_format_pretty_max_rows": max_rows or _UNLIMITED,
        "output_format_pretty_max_value_width": max_width or _UNLIMITED,
        "output_format_pretty_row_numbers": 0,
        "output_format_pretty_fallback_to_vertical": 0,
        "output_format_pretty_color": int(_isatty(stdout)),
    }
    return {name: value for name, value in wanted.items() if name in client.server_settings}


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
