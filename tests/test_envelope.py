"""schemas.envelope: the queue record format between the front door and the consumers."""

from __future__ import annotations

import re

import orjson
import pytest

from schemas import envelope

RECEIVED = "2026-11-26T10:00:00.123Z"


def event(i: int, **overrides) -> dict:
    return {
        "event_id": f"evt_{i}",
        "event": "paywall_viewed",
        "user_id": None,
        "anonymous_id": f"dev_{i}",
        "timestamp": "2024-03-15T14:22:00.000Z",
        "properties": {"i": i},
        **overrides,
    }


def test_round_trip_keeps_every_field_and_the_order():
    events = [
        event(0),
        event(1, user_id="usr_1"),
        event(
            2, anonymous_id=None, user_id="usr_2", properties={"note": "line\nbreak", "nested": {"a": [1]}}
        ),
    ]
    [value] = envelope.encode_records("acme", RECEIVED, events)
    env = envelope.decode(value)
    assert (env.workspace, env.received_at) == ("acme", RECEIVED)
    assert env.refs == [
        envelope.EventRef(e["event_id"], e["anonymous_id"], e["user_id"], e["timestamp"]) for e in events
    ]
    assert all(type(ref) is envelope.EventRef for ref in env.refs)
    assert env.refs[1].user_id == "usr_1" and env.refs[2].anonymous_id is None
    assert env.documents() == [{"workspace": "acme", "received_at": RECEIVED, **e} for e in events]
    # The lines are a view of the record itself: passing them on copies nothing.
    assert env.lines.obj is value and bytes(env.lines) == value.split(b"\n", 1)[1]
    # A newline inside a property is escaped: one line per event.
    assert value.count(b"\n") == len(events)


def test_large_requests_split_into_records_under_the_cap():
    events = [event(i, properties={"pad": "x" * 1000}) for i in range(100)]
    values = envelope.encode_records("acme", RECEIVED, events, max_bytes=10_000)
    assert len(values) > 10 and all(len(v) <= 10_000 for v in values)
    assert [d["event_id"] for v in values for d in envelope.decode(v).documents()] == [
        e["event_id"] for e in events
    ]
    # An event bigger than the cap on its own still travels, alone.
    [alone] = envelope.encode_records(
        "acme", RECEIVED, [event(0, properties={"pad": "x" * 20_000})], max_bytes=10_000
    )
    assert envelope.decode(alone).refs[0].event_id == "evt_0"


@pytest.mark.parametrize(
    "value, reason",
    [
        (b"not json", "not JSON"),
        (b'{"v":1,"workspace":"acme","received_at":"t","events":[]}', "version"),
        (b'{"v":2,"workspace":"acme","events":[]}', "lacks"),
        (
            b'{"v":2,"workspace":"acme","received_at":"t","events":[["evt_1",null,null]]}\n{}',
            "is not [event_id",
        ),
        (
            b'{"v":2,"workspace":"acme","received_at":"t","events":[[1,null,null,"t"]]}\n{}',
            "is not [event_id",
        ),
        (
            b'{"v":2,"workspace":"acme","received_at":"t","events":[["evt_1",["d"],null,"t"]]}\n{}',
            "is not [event_id",
        ),
        (b'{"v":2,"workspace":"acme","received_at":"t","events":[["evt_1",null,"u","t"]]}', "1 events but 0"),
        (
            b'{"v":2,"workspace":"acme","received_at":"t","events":[["evt_1",null,"u","t"]]}\n{}\n{}',
            "1 events but 2",
        ),
        (
            b'{"v":2,"workspace":"acme","received_at":"t","events":[["evt_1",null,"u","t"]]}\n[1]',
            "not JSON objects",
        ),
    ],
)
def test_corrupt_records_are_refused_with_the_reason(value, reason):
    with pytest.raises(envelope.EnvelopeError, match=re.escape(reason)):
        envelope.decode(value)


def test_header_and_lines_are_plain_json():
    [value] = envelope.encode_records("acme", RECEIVED, [event(0)])
    header, line = value.split(b"\n")
    assert orjson.loads(header) == {
        "v": 2,
        "workspace": "acme",
        "received_at": RECEIVED,
        "events": [["evt_0", "dev_0", None, "2024-03-15T14:22:00.000Z"]],
    }
    assert orjson.loads(line)["properties"] == {"i": 0}
