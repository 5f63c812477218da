"""The warehouse contract: table names, insert columns and row builders, identity lookups, the client.

Everything reaches ClickHouse through clickhouse-connect (the embedded `flokit warehouse` or a real
server, same code). The tables themselves are created by schemas/migrations (`flokit migrate`);
docs/analytics.md describes them column by column.

A consumer, per batch of envelopes (schemas.envelope)::

    client = connect(settings)
    known = resolve_links(client, settings.clickhouse_database, {(ws, anonymous_id) for ...})
    body = envelope.lines, or b"\\n".join(event_row(line, known.get((ws, anonymous_id))) for ...)
    client.raw_insert(EVENTS_TABLE, EVENT_COLUMNS, body, fmt=INSERT_FORMAT,
                      settings={**INSERT_SETTINGS, "insert_deduplication_token": batch_token})

Rows travel as JSONEachRow: the front door already wrote each event as its row (ClickHouse stamps
ingested_at; a consumer adds linked_user_id when it knows one), so a consumer passes the bytes through;
ClickHouse parses them in C++ and fills the typed property columns itself (their DEFAULT expressions), so no
property is converted or even parsed in Python.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import orjson


__all__ = [
    "EVENTS_TABLE", "LINKS_TABLE", "IDENTITY_MAP_TABLE", "IDENTITY_RESOLVED_VIEW", "EVENTS_DEDUPED_VIEW",
    "EVENTS_RESOLVED_VIEW", "PAYWALL_FUNNEL_VIEW", "MIGRATIONS_TABLE",
    "BASE_COLUMNS", "PROPERTY_COLUMNS", "EVENT_COLUMNS", "LINK_COLUMNS",
    "INSERT_FORMAT", "INSERT_SETTINGS", "event_row", "link_document", "encode", "is_link",
    "resolve_links", "connect", "migrate", "describe_url",
    "WarehouseUnreachable",
]

# Tables (what a consumer inserts into: on a cluster these are the Distributed tables).
EVENTS_TABLE = "events"
LINKS_TABLE = "identity_links"
# Written by the identity_map_mv materialized view, never directly.
IDENTITY_MAP_TABLE = "identity_map"
# Views.
IDENTITY_RESOLVED_VIEW = "identity_resolved"
EVENTS_DEDUPED_VIEW = "events_deduped"
EVENTS_RESOLVED_VIEW = "events_resolved"
PAYWALL_FUNNEL_VIEW = "paywall_funnel"
MIGRATIONS_TABLE = "schema_migrations"

#: The envelope/event columns of `events`, in insert order.
BASE_COLUMNS: tuple[str, ...] = (
    "workspace", "event_id", "event", "user_id", "anonymous_id", "linked_user_id",
    "timestamp", "received_at", "ingested_at", "properties",
)

#: The taxonomy properties that also get a typed column of their own (same name as the property). ClickHouse
#: fills them from `properties` (DEFAULT JSONExtract(properties, name, type), see 0001_events.sql); their
#: taxonomy types map as: string -> LowCardinality(Nullable(String)) or Nullable(String), number ->
#: Nullable(Float64), integer -> Nullable(Int64), boolean -> Nullable(Bool), string[] -> Array(String).
PROPERTY_COLUMNS: tuple[str, ...] = (
    "paywall_id", "offer_id", "plan_id", "plan_ids", "previous_plan_id", "placement", "context",
    "experiment_id", "variant_id", "store", "environment", "country", "currency", "period", "reason",
    "price", "revenue", "is_trial", "trial_length_days", "renewal_number",
    "transaction_id", "original_transaction_id",
)

#: The columns a consumer inserts into `events` (the keys of an event_row); the typed property
#: columns are not among them: ClickHouse computes those.
EVENT_COLUMNS: tuple[str, ...] = BASE_COLUMNS

#: The columns of an identity_links row (the keys of a link_document).
LINK_COLUMNS: tuple[str, ...] = ("workspace", "anonymous_id", "user_id", "timestamp", "event_id")

INSERT_FORMAT = "JSONEachRow"
#: How ClickHouse reads our documents: a JSON object (properties) into a String column as its JSON text,
#: ISO 8601 timestamps with a `Z`, and keys it does not know (from a producer that bypassed the front
#: door) ignored rather than failing the batch. And no ReplacingMergeTree collapse of the inserted block
#: (`optimize_on_insert`: a merge pass over every block): a consumer never puts two copies of an event
#: in one batch, merges and the FINAL views collapse copies from different inserts, and without it an
#: insert ran 12-27 % faster in the raw-insert bench (bench/README.md).
INSERT_SETTINGS: dict[str, int | str] = {
    "input_format_json_read_objects_as_strings": 1,
    "date_time_input_format": "best_effort",
    "input_format_skip_unknown_fields": 1,
    "optimize_on_insert": 0,
}


def event_row(line: bytes, linked_user_id: str | None) -> bytes:
    """An envelope's event line (schemas.envelope) as its `events` row: the line itself, or with the
    user id the consumer already knew for the event's anonymous_id added as linked_user_id. ClickHouse
    fills ingested_at (its default, the insert time) and the typed property columns."""
    if linked_user_id is None:
        return line
    return line[:-1] + b',"linked_user_id":%s}' % orjson.dumps(linked_user_id)


def encode(documents: list[dict]) -> bytes:
    """Row documents (dicts) as one JSONEachRow body (ClickHouse reads a JSON array of objects)."""
    return orjson.dumps(documents)


def is_link(event: dict) -> bool:
    """Whether the event carries both ids, i.e. links its anonymous_id to its user_id."""
    return bool(event.get("user_id")) and bool(event.get("anonymous_id"))


def link_document(workspace: str, event_id: str, anonymous_id: str | None, user_id: str | None,
                  timestamp: str) -> dict:
    """The `identity_links` row of an event that carries both ids, as a JSONEachRow document."""
    if not anonymous_id or not user_id:
        raise ValueError(f"event {event_id!r} does not carry both anonymous_id and user_id")
    return {"workspace": workspace, "anonymous_id": anonymous_id, "user_id": user_id,
            "timestamp": timestamp, "event_id": event_id}


def resolve_links(client, database: str, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The known user id of each (workspace, anonymous_id) pair that has one, by the identity policy
    (first link wins), in one query against identity_resolved. Pairs without a link are absent."""
    if not pairs:
        return {}
    # Server-side parameter: no quoting of our own, and clickhouse-connect moves large values into
    # the request body (form encoding) so URL limits and max_query_size do not apply.
    rows = client.query(
        f"SELECT workspace, anonymous_id, user_id FROM {_quote_identifier(database)}.{IDENTITY_RESOLVED_VIEW} "
        "WHERE (workspace, anonymous_id) IN {pairs:Array(Tuple(String, String))}",
        parameters={"pairs": sorted(pairs)},
    ).result_rows
    return {(workspace, anonymous_id): user_id for workspace, anonymous_id, user_id in rows}


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# -- the client --------------------------------------------------------------------------------------------


class WarehouseUnreachable(ConnectionError):
    """No ClickHouse answered at the configured URL."""


def describe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{unquote(parts.username or '')}:***@{netloc}").geturl()


def _client_options(settings: Any, database: str | None) -> dict[str, Any]:
    url = settings.warehouse_url.strip()
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"FLOKIT_CLICKHOUSE_URL={describe_url(url)!r}: expected http://[user[:password]@]host[:port]")
    secure = parts.scheme == "https"
    options: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or (8443 if secure else 8123),
        "interface": parts.scheme,
        "secure": secure,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else "",
    }
    return options


def connect(settings: Any, *, database: str | None = None, **client_options: Any):
    """A clickhouse-connect client for `settings.warehouse_url` (http[s]://[user[:password]@]host[:port]),
    whose unqualified table names mean `settings.clickhouse_database` (or `database`; "" for the server's
    default). Connecting works before that database exists (`flokit migrate` creates it): the client is
    made without it and pointed at it afterwards. Extra keyword arguments go to clickhouse_connect.get_client.
    Raises WarehouseUnreachable when nothing answers at the URL."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import OperationalError

    options = _client_options(settings, database)
    options.update(client_options)
    try:
        client = clickhouse_connect.get_client(**options)
    except OperationalError as exc:
        raise WarehouseUnreachable(
            f"cannot reach the warehouse at {describe_url(settings.warehouse_url)}: {_short_reason(exc)}\n"
            "  Is the warehouse running? Start the embedded one with `flokit warehouse`, "
            "or set FLOKIT_CLICKHOUSE_URL to your ClickHouse server.") from exc
    database = settings.clickhouse_database if database is None else database
    if database:
        client.database = database
    return client


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Temporary failure in name resolution", "Connection reset"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def migrate(settings: Any) -> list[str]:
    """Connect and apply pending migrations (see schemas.migrations); returns the names applied."""
    from schemas.migrations import apply_migrations
    client = connect(settings)
    try:
        return apply_migrations(client, settings)
    finally:
        client.close()
