"""The warehouse contract: table names, insert columns and row builders, identity lookups, the client.

Everything reaches ClickHouse through clickhouse-connect (the embedded `flokit warehouse` or a real
server, same code). The tables themselves are created by schemas/migrations (`flokit migrate`);
docs/analytics.md describes them column by column.

A consumer, per batch of envelopes::

    client = connect(settings)
    known = resolve_links(client, settings.clickhouse_database, {(ws, anon) for ...})
    rows = [event_row(ws, received_at, event, known.get((ws, event["anonymous_id"])), now) for ...]
    client.insert(EVENTS_TABLE, rows, column_names=EVENT_COLUMNS, database=settings.clickhouse_database,
                  settings={"insert_deduplication_token": batch_token})
    client.insert(LINKS_TABLE, [link_row(ws, e) for e in events if is_link(e)], column_names=LINK_COLUMNS, ...)
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import orjson

from schemas.taxonomy import PROPERTY_TYPES

__all__ = [
    "EVENTS_TABLE", "LINKS_TABLE", "IDENTITY_MAP_TABLE", "IDENTITY_RESOLVED_VIEW", "EVENTS_DEDUPED_VIEW",
    "EVENTS_RESOLVED_VIEW", "PAYWALL_FUNNEL_VIEW", "MIGRATIONS_TABLE",
    "BASE_COLUMNS", "PROPERTY_COLUMNS", "EVENT_COLUMNS", "LINK_COLUMNS",
    "event_row", "link_row", "is_link", "resolve_links", "connect", "migrate", "describe_url", "parse_timestamp",
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

#: The taxonomy properties that also get a typed column of their own (same name as the property), in
#: insert order after BASE_COLUMNS. Their taxonomy types map to ClickHouse as: string ->
#: (LowCardinality(Nullable(String)) or Nullable(String)), number -> Nullable(Float64),
#: integer -> Nullable(Int64), boolean -> Nullable(Bool), string[] -> Array(String).
PROPERTY_COLUMNS: tuple[str, ...] = (
    "paywall_id", "offer_id", "plan_id", "plan_ids", "previous_plan_id", "placement", "context",
    "experiment_id", "variant_id", "store", "environment", "country", "currency", "period", "reason",
    "price", "revenue", "is_trial", "trial_length_days", "renewal_number",
    "transaction_id", "original_transaction_id",
)

#: Column order of an events row (event_row's output), for client.insert(..., column_names=EVENT_COLUMNS).
EVENT_COLUMNS: tuple[str, ...] = BASE_COLUMNS + PROPERTY_COLUMNS

#: Column order of an identity_links row (link_row's output).
LINK_COLUMNS: tuple[str, ...] = ("workspace", "anonymous_id", "user_id", "timestamp", "event_id")

_UTC = timezone.utc
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _as_str(value: Any) -> str | None:
    return value if type(value) is str else None


def _as_float(value: Any) -> float | None:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _as_int(value: Any) -> int | None:
    return value if type(value) is int and _INT64_MIN <= value <= _INT64_MAX else None


def _as_bool(value: Any) -> bool | None:
    return value if type(value) is bool else None


def _as_str_list(value: Any) -> list[str]:
    if type(value) is list and all(type(item) is str for item in value):
        return value
    return []


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "string": _as_str, "number": _as_float, "integer": _as_int, "boolean": _as_bool, "string[]": _as_str_list,
}
# (property name, converter) per typed column; a missing property is None (an empty array for string[]).
_EXTRACTORS: tuple[tuple[str, Callable[[Any], Any], Any], ...] = tuple(
    (name, _CONVERTERS[PROPERTY_TYPES[name]], [] if PROPERTY_TYPES[name] == "string[]" else None)
    for name in PROPERTY_COLUMNS
)


def parse_timestamp(text: str) -> datetime:
    """'2024-03-15T14:22:00.000Z' (or any ISO 8601 with an offset) -> an aware datetime in UTC."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=_UTC)
    return dt if dt.tzinfo is _UTC else dt.astimezone(_UTC)


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        return dt.replace(tzinfo=_UTC)
    return dt if dt.tzinfo is _UTC else dt.astimezone(_UTC)


def event_row(workspace: str, received_at: str, event: dict, linked_user_id: str | None,
              ingested_at: datetime) -> list:
    """One `events` row, in EVENT_COLUMNS order, from a validated event of an envelope.

    `linked_user_id`: the user id the consumer already knew for this event's anonymous_id (None if none,
    or if the event carries its own user_id: it is only meaningful for anonymous events). Timestamps
    become aware UTC datetimes; properties become compact JSON text; each typed column takes its property
    when present with the taxonomy's JSON type, else NULL (an empty array for string[]).
    """
    properties = event.get("properties") or {}
    row = [
        workspace,
        event["event_id"],
        event["event"],
        event.get("user_id"),
        event.get("anonymous_id"),
        linked_user_id,
        parse_timestamp(event["timestamp"]),
        parse_timestamp(received_at),
        _utc(ingested_at),
        orjson.dumps(properties).decode(),
    ]
    get = properties.get
    for name, convert, missing in _EXTRACTORS:
        value = get(name)
        row.append(missing if value is None else convert(value))
    return row


def is_link(event: dict) -> bool:
    """Whether the event carries both ids, i.e. links its anonymous_id to its user_id."""
    return bool(event.get("user_id")) and bool(event.get("anonymous_id"))


def link_row(workspace: str, event: dict) -> list:
    """One `identity_links` row, in LINK_COLUMNS order, for an event that carries both ids."""
    anonymous_id, user_id = event.get("anonymous_id"), event.get("user_id")
    if not anonymous_id or not user_id:
        raise ValueError(f"event {event.get('event_id')!r} does not carry both anonymous_id and user_id")
    return [workspace, anonymous_id, user_id, parse_timestamp(event["timestamp"]), event["event_id"]]


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
            f"cannot reach the warehouse at {describe_url(settings.warehouse_url)}: {_short_reason(exc)}") from exc
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
