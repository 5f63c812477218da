"""The warehouse client side: clickhouse-connect clients for the configured ClickHouse (the embedded
`flokit warehouse` or a real server, same code), `flokit migrate`, and ClickHouse's error messages made
short enough to print.

What is written and read (tables, columns, insert settings) is the contract in schemas/warehouse.py; the
migration files and how they are applied are schemas/migrations.
"""

from __future__ import annotations

import logging
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from schemas.migrations import (
    MigrationError,
    Topology,
    apply_migrations,
    bootstrap_statements,
    load_migrations,
    render_all,
)

from .settings import Settings

# How clickhouse-connect words the failures of a connection; one of these is the whole reason to give.
_CONNECTION_FAILURES = (
    "Connection refused",
    "Name or service not known",
    "timed out",
    "No route to host",
    "Temporary failure in name resolution",
    "Connection reset",
)


class WarehouseUnreachable(ConnectionError):
    """No ClickHouse answered at the configured URL."""


def describe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{unquote(parts.username or '')}:***@{netloc}").geturl()


def client_options(url: str) -> dict[str, Any]:
    """clickhouse_connect.get_client's arguments for http[s]://[user[:password]@]host[:port]."""
    url = url.strip()
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"FLOKIT_CLICKHOUSE_URL={describe_url(url)!r}: expected http://[user[:password]@]host[:port]"
        )
    secure = parts.scheme == "https"
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or (8443 if secure else 8123),
        "interface": parts.scheme,
        "secure": secure,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
    }


def connect(settings: Settings, *, database: str | None = None, **extra: Any):
    """A clickhouse-connect client for `settings.warehouse_url`, whose unqualified table names mean
    `settings.clickhouse_database` (or `database`; "" for the server's default). Connecting works before that
    database exists (`flokit migrate` creates it): the client is made without it and pointed at it
    afterwards. Extra keyword arguments go to clickhouse_connect.get_client. Raises WarehouseUnreachable when
    nothing answers at the URL."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import OperationalError

    try:
        client = clickhouse_connect.get_client(**{**client_options(settings.warehouse_url), **extra})
    except OperationalError as exc:
        raise WarehouseUnreachable(
            f"cannot reach the warehouse at {describe_url(settings.warehouse_url)}: "
            f"{clickhouse_message(exc)}\n"
            "  Is the warehouse running? Start the embedded one with `flokit warehouse`, "
            "or set FLOKIT_CLICKHOUSE_URL to your ClickHouse server."
        ) from exc
    database = settings.clickhouse_database if database is None else database
    if database:
        client.database = database
    return client


def clickhouse_message(exc: BaseException) -> str:
    """What went wrong, in ClickHouse's own words: `Code: N. DB::Exception: ... (NAME)` without
    clickhouse-connect's wrapping (the URL, the server version); for a failure to connect, the reason in a
    few words; else the first line of the message."""
    text = str(exc)
    start = text.find("Code: ")
    if start >= 0:
        text = text[start:]
        for tail in (" (for url ", " (version "):
            cut = text.find(tail)
            if cut >= 0:
                text = text[:cut]
        return text.strip()
    for failure in _CONNECTION_FAILURES:
        if failure in text:
            return failure.lower()
    return text.splitlines()[0][:300] if text.strip() else type(exc).__name__


def migrate(settings: Settings) -> list[str]:
    """Connect and apply pending migrations (schemas.migrations); returns the names applied. A statement
    ClickHouse refused is a MigrationError that says ClickHouse's reason."""
    client = connect(settings)
    try:
        return apply_migrations(client, settings.clickhouse_database, settings.clickhouse_cluster)
    except MigrationError as exc:
        if exc.__cause__ is None:
            raise
        raise MigrationError(f"{exc}: {clickhouse_message(exc.__cause__)}") from exc.__cause__
    finally:
        client.close()


def migrate_main(settings: Settings, print_only: bool = False, stdout=None, stderr=None) -> int:
    """`flokit migrate`: apply what is pending and say what was applied (or print the statements)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)  # its retry warnings; we say it better
    topology = Topology(settings.clickhouse_database, settings.clickhouse_cluster)
    if print_only:
        for statement in bootstrap_statements(topology):
            print(f"{statement};\n", file=stdout)
        for name, statements in render_all(topology):
            print(f"-- {name}", file=stdout)
            for statement in statements:
                print(f"{statement};\n", file=stdout)
        return 0
    try:
        applied = migrate(settings)
    except (WarehouseUnreachable, MigrationError) as exc:
        print(f"flokit migrate: {exc}", file=stderr)
        return 1
    # clickhouse-connect's errors: ClickHouse refused a bootstrap statement or went away.
    except Exception as exc:
        print(
            f"flokit migrate: {describe_url(settings.warehouse_url)}: {clickhouse_message(exc)}", file=stderr
        )
        return 1
    descriptions = {m.name: m.description for m in load_migrations()}
    for name in applied:
        print(f"applied {name}: {descriptions.get(name, '')}", file=stdout)
    total = len(descriptions)
    where = f"database {topology.database}" + (f" on cluster {topology.cluster}" if topology.cluster else "")
    print(
        f"{where}: {'up to date' if not applied else f'{len(applied)} applied now'}, "
        f"{total} migration{'s' if total != 1 else ''} in all",
        file=stdout,
    )
    return 0
