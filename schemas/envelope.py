"""The queue's record format: a versioned envelope (contract between the front
door and the consumers).

One record carries the accepted events of one workspace that fall in one
partition, from one request or from the several a front-door worker enqueues
together (ingest_api.enqueue), so a 1,000-event batch costs a handful of queue
appends rather than a thousand, and so do a hundred concurrent single events. Version 2 is a JSON header line,
then one line per event:

    {"v":2,"workspace":"acme","received_at":"2026-11-26T10:00:00.123Z",
     "events":[["evt_…","dev_9"|null,"usr_1"|null,"2024-03-15T14:22:00.000Z"],…]}
    {"workspace":"acme","received_at":"…","event_id":"evt_…","event":"paywall_viewed",
     "user_id":"usr_1"|null,"anonymous_id":"dev_9"|null,"timestamp":"…","properties":{…}}
    …

The header lists each event's [event_id, anonymous_id, user_id, timestamp]:
all a consumer needs to dedupe and link identities. Its received_at is its
first event's; each event line carries the event's own (events enqueued
together may come from requests received a few milliseconds apart). Each event line is already
the event's `events` row as ClickHouse's JSONEachRow reads it (ClickHouse
stamps ingested_at; schemas.warehouse.event_row adds linked_user_id when a
consumer knows it), so a consumer never parses or re-serialises an event's
properties: it passes the front door's bytes through, usually a whole
record's lines at once. orjson never writes a raw newline inside JSON, so the
lines split cleanly.

Partitioning: an event's partition comes from its anonymous_id when it has one,
else its user_id. Every event of one device therefore lands on one partition in
order, including the event that links the device to a user, which is what lets
a consumer stamp the user id on that device's later anonymous-only events.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

import orjson

VERSION = 2
# Kafka brokers refuse records over 1 MiB by default (message.max.bytes); a
# request's events are split across records to stay well under it.
MAX_RECORD_BYTES = 900_000


class EnvelopeError(ValueError):
    """A record that is not a valid envelope (it goes to the dead-letter topic)."""


class EventRef(NamedTuple):
    """What the header says of one event: all a consumer needs to dedupe it and link identities."""

    event_id: str
    anonymous_id: str | None
    user_id: str | None
    timestamp: str


# An EventRef straight from a checked [event_id, anonymous_id, user_id, timestamp] list: decoding is on the
# consumer's hot path, and tuple.__new__ skips the Python-level _make.
_event_ref = partial(tuple.__new__, EventRef)


@dataclass(frozen=True, slots=True)
class Envelope:
    workspace: str
    received_at: str  # the first event's (each line has its own)
    refs: list[EventRef]  # one per event, in the order of the lines
    lines: memoryview  # the event lines, one per ref and in their order, newline-separated (a view: no copy)

    @property
    def rows(self) -> list[bytes]:
        """Each event's line, split out (a copy)."""
        return bytes(self.lines).split(b"\n")

    def documents(self) -> list[dict[str, Any]]:
        """The event lines parsed (for tools and tests; consumers pass the bytes through)."""
        return [orjson.loads(row) for row in self.rows]


def partition_key(event: Mapping[str, Any]) -> str:
    key: str = event.get("anonymous_id") or event["user_id"]
    return key


def partition_for(key: str, partitions: int) -> int:
    # crc32 is stable across processes and Python versions (unlike hash()).
    return zlib.crc32(key.encode()) % partitions


def iso_ms(ts: float) -> str:
    """A POSIX time as the envelope writes every time: UTC, milliseconds, `Z`."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_records(
    workspace: str,
    received_at: str | Sequence[str],
    events: Sequence[Mapping[str, Any]],
    max_bytes: int = MAX_RECORD_BYTES,
) -> list[bytes]:
    """Validated events (each with its event_id) as one or more envelopes, each at
    most about `max_bytes` long; an event larger than that on its own still gets
    an envelope of its own. Each event is serialised once. `received_at` is every
    event's, or one per event (events of several requests enqueued together); a
    header carries its first event's."""
    times = [received_at] * len(events) if isinstance(received_at, str) else received_at
    quoted_workspace = orjson.dumps(workspace)
    heads: dict[str, bytes] = {}

    def row_head(at: str) -> bytes:
        if at not in heads:
            heads[at] = b'{"workspace":%s,"received_at":%s,' % (quoted_workspace, orjson.dumps(at))
        return heads[at]

    records: list[bytes] = []
    refs: list[bytes] = []  # the current record's header entries
    rows: list[bytes] = []  # and its event lines
    size, first = 0, ""

    def close_record() -> None:
        head = b'{"v":%d,"workspace":%s,"received_at":%s,"events":[' % (
            VERSION,
            quoted_workspace,
            orjson.dumps(first),
        )
        records.append(head + b",".join(refs) + b"]}\n" + b"\n".join(rows))

    # One time per event: a shorter list must fail loudly, not drop the events past its end.
    for at, event in zip(times, events, strict=True):
        row = row_head(at) + orjson.dumps(event)[1:]
        ref = orjson.dumps(
            [event["event_id"], event.get("anonymous_id"), event.get("user_id"), event["timestamp"]]
        )
        if rows and size + len(row) + len(ref) + 2 > max_bytes:
            close_record()
            refs, rows, size = [], [], 0
        if not rows:
            first = at
        refs.append(ref)
        rows.append(row)
        size += len(row) + len(ref) + 2
    if rows:
        close_record()
    return records


def decode(value: bytes) -> Envelope:
    """The envelope of a record, checked as far as it can be without parsing the event lines (ClickHouse
    parses those; one it cannot read sends the record to the dead-letter topic)."""
    end = value.find(b"\n")
    header = value if end < 0 else value[:end]
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"header is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise EnvelopeError(
            f"unsupported envelope version: {doc.get('v') if isinstance(doc, dict) else type(doc).__name__}"
        )
    workspace, received_at, refs = doc.get("workspace"), doc.get("received_at"), doc.get("events")
    if not isinstance(workspace, str) or not isinstance(received_at, str) or not isinstance(refs, list):
        raise EnvelopeError("envelope lacks workspace, received_at or events")
    for ref in refs:
        if not (
            isinstance(ref, list)
            and len(ref) == 4
            and isinstance(ref[0], str)
            and isinstance(ref[3], str)
            and (ref[1] is None or isinstance(ref[1], str))
            and (ref[2] is None or isinstance(ref[2], str))
        ):
            raise EnvelopeError("an event in the header is not [event_id, anonymous_id, user_id, timestamp]")
    lines = memoryview(value)[len(header) + 1 :]
    count = value.count(b"\n", len(header) + 1) + 1 if lines else 0
    if count != len(refs):
        raise EnvelopeError(f"the header lists {len(refs)} events but {count} event lines follow")
    if refs and not (value.startswith(b"{", len(header) + 1) and value.endswith(b"}")):
        raise EnvelopeError("the event lines are not JSON objects")
    return Envelope(workspace, received_at, list(map(_event_ref, refs)), lines)
