"""The queue's record format: a versioned JSON envelope (contract between the
front door and the consumers).

One record carries the accepted events of one request that fall in one
partition, so a 1,000-event batch costs a handful of queue appends rather than
a thousand. Version 1:

    {"v": 1, "workspace": "acme", "received_at": "2026-11-26T10:00:00.123Z",
     "events": [{"event_id": "evt_…", "event": "paywall_viewed",
                 "user_id": "usr_1" | null, "anonymous_id": "dev_9" | null,
                 "timestamp": "2024-03-15T14:22:00.000Z", "properties": {…}}, …]}

Partitioning: an event's partition comes from its anonymous_id when it has one,
else its user_id. Every event of one device therefore lands on one partition in
order, including the event that links the device to a user, which is what lets
a consumer stamp the user id on that device's later anonymous-only events.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

import orjson

VERSION = 1
# Kafka brokers refuse records over 1 MiB by default (message.max.bytes); a
# request's events are split across records to stay well under it.
MAX_RECORD_BYTES = 900_000


class EnvelopeError(ValueError):
    """A record that is not a valid envelope (it goes to the dead-letter topic)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    workspace: str
    received_at: str
    events: list[dict[str, Any]]


def partition_key(event: dict[str, Any]) -> str:
    return event.get("anonymous_id") or event["user_id"]


def partition_for(key: str, partitions: int) -> int:
    # crc32 is stable across processes and Python versions (unlike hash()).
    return zlib.crc32(key.encode()) % partitions


def iso_ms(ts: float) -> str:
    """A POSIX time as the envelope writes every time: UTC, milliseconds, `Z`."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_records(workspace: str, received_at: str, events: Sequence[dict[str, Any]],
                   max_bytes: int = MAX_RECORD_BYTES) -> list[bytes]:
    """`events` as one or more envelopes, each at most about `max_bytes` long.

    Events are serialised once each and joined, so splitting costs nothing; an
    event larger than `max_bytes` on its own still gets an envelope of its own.
    """
    head = b'{"v":%d,"workspace":%s,"received_at":%s,"events":[' % (VERSION, orjson.dumps(workspace), orjson.dumps(received_at))
    records, chunk, size = [], [], len(head) + 2
    for encoded in map(orjson.dumps, events):
        if chunk and size + len(encoded) + 1 > max_bytes:
            records.append(head + b",".join(chunk) + b"]}")
            chunk, size = [], len(head) + 2
        chunk.append(encoded)
        size += len(encoded) + 1
    if chunk:
        records.append(head + b",".join(chunk) + b"]}")
    return records


def decode(value: bytes) -> Envelope:
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise EnvelopeError(f"unsupported envelope version: {doc.get('v') if isinstance(doc, dict) else type(doc).__name__}")
    workspace, received_at, events = doc.get("workspace"), doc.get("received_at"), doc.get("events")
    if not isinstance(workspace, str) or not isinstance(received_at, str) or not isinstance(events, list):
        raise EnvelopeError("envelope lacks workspace, received_at or events")
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("event_id"), str) or not isinstance(event.get("event"), str):
            raise EnvelopeError("an event in the envelope lacks event_id or event")
    return Envelope(workspace, received_at, events)
