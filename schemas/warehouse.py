"""The warehouse contract: table and view names, the columns a consumer inserts, how the rows are sent
(JSONEachRow and its settings), and the row builders.

The tables themselves are created by schemas/migrations (`flokit migrate`); docs/analytics.md describes them
column by column. The clients that talk to ClickHouse are deploy/clickhouse.py's; a consumer, per batch of
envelopes (schemas.envelope), sends::

    body = envelope.lines, or b"\\n".join(event_row(line, known.get((ws, anonymous_id))) for ...)
    client.raw_insert(EVENTS_TABLE, EVENT_COLUMNS, body, fmt=INSERT_FORMAT,
                      settings={**INSERT_SETTINGS, "insert_deduplication_token": batch_token})

Rows travel as JSONEachRow: the front door already wrote each event as its row (ClickHouse stamps
ingested_at; a consumer adds linked_user_id when it knows one), so a consumer passes the bytes through;
ClickHouse parses them in C++ and fills the typed property columns itself (their DEFAULT expressions), so no
property is converted or even parsed in Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypedDict

import orjson

__all__ = [
    "EVENTS_TABLE",
    "LINKS_TABLE",
    "IDENTITY_MAP_TABLE",
    "IDENTITY_RESOLVED_VIEW",
    "EVENTS_DEDUPED_VIEW",
    "EVENTS_RESOLVED_VIEW",
    "PAYWALL_FUNNEL_VIEW",
    "MIGRATIONS_TABLE",
    "BASE_COLUMNS",
    "PROPERTY_COLUMNS",
    "EVENT_COLUMNS",
    "LINK_COLUMNS",
    "LinkDocument",
    "INSERT_FORMAT",
    "INSERT_SETTINGS",
    "event_row",
    "link_document",
    "encode",
    "quote_identifier",
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
    "workspace",
    "event_id",
    "event",
    "user_id",
    "anonymous_id",
    "linked_user_id",
    "timestamp",
    "received_at",
    "ingested_at",
    "properties",
)

#: The taxonomy properties that also get a typed column of their own (same name as the property). ClickHouse
#: fills them from `properties` (DEFAULT JSONExtract(properties, name, type), see 0001_events.sql); their
#: taxonomy types map as: string -> LowCardinality(Nullable(String)) or Nullable(String), number ->
#: Nullable(Float64), integer -> Nullable(Int64), boolean -> Nullable(Bool), string[] -> Array(String).
PROPERTY_COLUMNS: tuple[str, ...] = (
    "paywall_id",
    "offer_id",
    "plan_id",
    "plan_ids",
    "previous_plan_id",
    "placement",
    "context",
    "experiment_id",
    "variant_id",
    "store",
    "environment",
    "country",
    "currency",
    "period",
    "reason",
    "price",
    "revenue",
    "is_trial",
    "trial_length_days",
    "renewal_number",
    "transaction_id",
    "original_transaction_id",
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
#: in one batch, merges and the FINAL views collapse copies from different inserts, and that pass is work
#: on every insert (bench/README.md).
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


class LinkDocument(TypedDict):
    """An identity_links row (LINK_COLUMNS)."""

    workspace: str
    anonymous_id: str
    user_id: str
    timestamp: str
    event_id: str


def encode(documents: Sequence[Mapping[str, object]]) -> bytes:
    """Row documents (dicts) as one JSONEachRow body (ClickHouse reads a JSON array of objects)."""
    return orjson.dumps(documents)


def link_document(
    workspace: str, event_id: str, anonymous_id: str | None, user_id: str | None, timestamp: str
) -> LinkDocument:
    """The `identity_links` row of an event that carries both ids, as a JSONEachRow document."""
    if not anonymous_id or not user_id:
        raise ValueError(f"event {event_id!r} does not carry both anonymous_id and user_id")
    return {
        "workspace": workspace,
        "anonymous_id": anonymous_id,
        "user_id": user_id,
        "timestamp": timestamp,
        "event_id": event_id,
    }


def quote_identifier(name: str) -> str:
    """A database, table or cluster name as a ClickHouse identifier, whatever characters it holds."""
    if not name:
        raise ValueError("an empty identifier")
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
