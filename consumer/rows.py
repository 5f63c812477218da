"""A batch's messages as the rows the writers insert: each message's event lines passed through as bytes,
or edited (events already written dropped, linked_user_id stamped), and the identity links they carry."""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from typing import cast

from schemas import warehouse
from schemas.envelope import Envelope
from schemas.queue import Message
from schemas.warehouse import LinkDocument

from .identity import IdentityCache


@dataclass
class MessageRows:
    message: Message
    events: list[bytes | memoryview]  # its events' JSONEachRow rows (schemas.warehouse.event_row), in pieces
    links: list[LinkDocument] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)  # of the events kept, in order


def message_rows(
    message: Message, env: Envelope, identity: IdentityCache, written: Container[str], seen: set[str]
) -> MessageRows:
    """A message's rows: its event lines as they are, or edited: without the events already written (in
    `written`, or earlier in this batch: `seen`, which this adds to) and with linked_user_id on those whose
    link `identity` knows. The links its events make are told to `identity` as they come, in order, so an
    event stamps a link made earlier in the same batch."""
    workspace = env.workspace
    rows = MessageRows(message, [env.lines])
    linked_at: dict[int, str] = {}  # index of an event → the user id to stamp on it
    dropped: set[int] = set()  # indexes of events already written
    for index, (event_id, anonymous_id, user_id, timestamp) in enumerate(env.refs):
        if event_id in written or event_id in seen:
            dropped.add(index)
            continue
        seen.add(event_id)
        if anonymous_id and user_id:
            identity.link((workspace, anonymous_id), user_id)
            rows.links.append(warehouse.link_document(workspace, event_id, anonymous_id, user_id, timestamp))
        elif anonymous_id:
            linked = identity.user_for((workspace, anonymous_id))
            if linked is not None:
                linked_at[index] = linked
        rows.event_ids.append(event_id)
    if linked_at or dropped:
        rows.events = edited(env.lines, linked_at, dropped)
    return rows


def edited(lines: memoryview, linked_at: dict[int, str], dropped: set[int]) -> list[bytes | memoryview]:
    """A record's event lines (a view of the record) without the `dropped` ones and with linked_user_id on
    the `linked_at` ones, as pieces of a JSONEachRow body: runs of untouched lines stay views of the record,
    only an edited line is new bytes. So a batch in flight holds each event's bytes once."""
    # lines is the record's tail (schemas.envelope.decode): offsets in the record are offsets in lines + base.
    record = cast(bytes, lines.obj)
    base = len(record) - len(lines)
    pieces: list[bytes | memoryview] = []
    kept = start = base  # kept: the first byte not yet in a piece; start: where line `index` starts
    index = 0
    for target in sorted(linked_at.keys() | dropped):
        while index < target:
            start = record.find(b"\n", start) + 1
            index += 1
        end = record.find(b"\n", start)
        end = len(record) if end < 0 else end
        if kept < start:
            pieces.append(lines[kept - base : start - base])  # untouched lines, each with its newline
        if target not in dropped:
            pieces.append(warehouse.event_row(record[start:end], linked_at[target]) + b"\n")
        kept = start = end + 1
        index = target + 1
    if kept < len(record):
        pieces.append(lines[kept - base :])
    return pieces


def events_body(per_message: list[MessageRows]) -> Iterator[bytes | memoryview]:
    """The messages' rows streamed as one JSONEachRow body (clickhouse-connect sends an iterator chunked),
    without joining a batch's worth of bytes into one more copy. ClickHouse skips the blank line an edited
    last line leaves."""
    for rows in per_message:
        if rows.event_ids:  # not every event dropped
            yield from rows.events
            yield b"\n"


def links_body(per_message: list[MessageRows]) -> bytes:
    """The messages' identity_links rows as one JSONEachRow body (b"" when there are none)."""
    links = [link for rows in per_message for link in rows.links]
    return warehouse.encode(links) if links else b""
