"""Odd JSON documents through the real front door (gunicorn, Kafka, Redis): nesting orjson reads but will not
write back, numbers at and past 64 bits, escapes, long and duplicate keys, bodies that are not objects. Each
goes to both endpoints, with and without an Idempotency-Key: never a 5xx, every refusal in the API's shape,
and an idempotent retry gets the first answer back."""

from __future__ import annotations

import orjson
import pytest

from ingest_api.idempotency import fingerprint
from schemas.events import BATCH_ERROR_CODES

from .services import api_server, unique

GOOD = b'{"event":"paywall_viewed","anonymous_id":"dev_1","timestamp":"2024-03-15T14:22:00Z"}'


def nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


def deep_objects(depth: int) -> bytes:
    return b'{"k":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def event(**fields: bytes) -> bytes:
    """GOOD with some fields replaced by raw JSON text (kept byte for byte: duplicate keys, escapes...)."""
    base = {"event": b'"paywall_viewed"', "anonymous_id": b'"dev_1"', "timestamp": b'"2024-03-15T14:22:00Z"'}
    base.update(fields)
    return b"{" + b",".join(b'"%s":%s' % (name.encode(), text) for name, text in base.items()) + b"}"


# Events, sent as the /v1/events body and as the second event of a batch (after a good one).
ODD_EVENTS = {
    "properties 300 arrays deep": event(properties=b'{"a":' + nested(300) + b"}"),
    "event 254 levels deep (the most orjson writes)": event(properties=b'{"a":' + nested(252) + b"}"),
    "properties 300 objects deep": event(properties=deep_objects(300)),
    "properties 1000 levels": event(properties=b'{"a":' + nested(998) + b"}"),
    "properties past the parser's depth": event(properties=b'{"a":' + nested(1100) + b"}"),
    "user_id 300 deep": event(user_id=nested(300)),
    "anonymous_id 300 deep": event(anonymous_id=deep_objects(300)),
    "timestamp 300 deep": event(timestamp=nested(300)),
    "event name 300 deep": event(event=nested(300)),
    "unknown field 300 deep": event(extra=nested(300)),
    "properties 300 deep in a second key": event(properties=b'{"b":1,"a":' + deep_objects(299) + b"}"),
    "u64 max integer property": event(properties=b'{"renewal_number":18446744073709551615}'),
    "integer past u64": event(properties=b'{"renewal_number":18446744073709551616}'),
    "integer past u64 in a number": event(properties=b'{"price":184467440737095516160}'),
    "integer below i64": event(properties=b'{"trial_length_days":-9223372036854775809}'),
    "free-form huge integers": event(
        properties=b'{"n":18446744073709551615,"m":-9223372036854775808,"big":1' + b"0" * 400 + b"}"
    ),
    "1e400": event(properties=b'{"price":1e400}'),
    "-1e400": event(properties=b'{"x":-1e400}'),
    "1e-400": event(properties=b'{"price":1e-400}'),
    "NaN": event(properties=b'{"price":NaN}'),
    "Infinity": event(properties=b'{"price":Infinity}'),
    "-Infinity in user_id": event(user_id=b"-Infinity"),
    "lone high surrogate in a value": event(properties=b'{"note":"\\ud800"}'),
    "lone low surrogate in a key": event(properties=b'{"\\udc00":1}'),
    "lone surrogate in user_id": event(user_id=b'"usr_\\ud800"'),
    "surrogate pair": event(user_id=b'"usr_\\ud83d\\ude00"'),
    "NUL in user_id": event(user_id=b'"usr\\u0000"'),
    "very long property key": event(properties=b'{"' + b"k" * 100_000 + b'":1}'),
    "very long nested key": event(properties=b'{"a":{"' + b"k" * 100_000 + b'":1}}'),
    "very long unknown field": b"{" + b'"' + b"f" * 100_000 + b'":1,' + event()[1:],
    "very long event name": event(event=b'"' + b"e" * 100_000 + b'"'),
    "duplicate keys": event(properties=b'{"a":1,"a":2}')[:-1] + b',"user_id":"u1","user_id":"u2"}',
    "duplicate properties": event(properties=b'{"price":"x"}')[:-1] + b',"properties":{"price":1}}',
    "empty key": event(properties=b'{"":1}'),
    "non-object properties": event(properties=nested(300)),
}
# Whole bodies, sent as they are to both endpoints.
ODD_BODIES = {
    "array 300 deep": nested(300),
    "object 300 deep": deep_objects(300),
    "array 2000 deep": nested(2000),
    "batch of a deep event": b'{"events":[' + nested(300) + b"]}",
    "batch whose events are deep": b'{"events":' + nested(300) + b"}",
    "deep unknown batch field": b'{"events":[' + GOOD + b'],"x":' + nested(300) + b"}",
    "number": b"18446744073709551616",
    "string": b'"\\ud800"',
    "null": b"null",
    "true": b"true",
    "NaN": b"NaN",
    "empty array": b"[]",
    "duplicate events keys": b'{"events":[],"events":[' + GOOD + b"]}",
}

CASES = [
    (name, path, body)
    for name, text in ODD_EVENTS.items()
    for path, body in (
        ("/v1/events", text),
        ("/v1/batch/events", b'{"events":[' + GOOD + b"," + text + b"]}"),
    )
]
CASES += [
    (name, path, body) for name, body in ODD_BODIES.items() for path in ("/v1/events", "/v1/batch/events")
]


@pytest.fixture(scope="module")
def server(production_env):
    with api_server(production_env) as srv:
        yield srv


@pytest.fixture(scope="module")
def key(workspace_key):
    return workspace_key(rate_limit_per_minute=100_000)[1]


# Refusals made before the Idempotency-Key is looked at (the body is not a document of the endpoint's shape),
# so a retry gets the same answer again, not a replay.
BEFORE_THE_KEY = {
    "/v1/events": {"invalid_json", "invalid_utf8"},
    "/v1/batch/events": {"invalid_json", "invalid_utf8", *BATCH_ERROR_CODES},
}


def assert_answered(resp, what: str) -> None:
    assert resp.status_code < 500, (what, resp.status_code, resp.text[:500])
    assert resp.headers["Content-Type"] == "application/json", what
    body = resp.json()
    if resp.status_code != 200:
        assert isinstance(body["error"], str) and body["error"], (what, body)
        assert isinstance(body["message"], str) and body["message"], (what, body)


@pytest.mark.parametrize("name, path, body", CASES, ids=[f"{path} {name}" for name, path, _ in CASES])
def test_odd_documents_never_get_a_5xx(server, key, name, path, body):
    plain = server.post(path, data=body, key=key)
    assert_answered(plain, name)
    idem = {"Idempotency-Key": unique("odd")}
    first = server.post(path, data=body, key=key, headers=idem)
    assert_answered(first, name + " (Idempotency-Key)")
    assert first.status_code == plain.status_code, name
    again = server.post(path, data=body, key=key, headers=idem)
    assert (again.status_code, again.json()) == (first.status_code, first.json()), name
    replayed = first.status_code == 200 or first.json()["error"] not in BEFORE_THE_KEY[path]
    assert again.headers.get("Idempotent-Replayed") == ("true" if replayed else None), name


@pytest.mark.parametrize("headers", [{}, {"Idempotency-Key": "deep"}])
def test_deep_properties_are_invalid_properties_with_or_without_a_key(server, workspace_key, headers):
    """The outside probe's case: 300 levels deep plus an Idempotency-Key was a 500."""
    _, key = workspace_key()
    text = event(properties=b'{"a":' + nested(300) + b"}")
    single = server.post("/v1/events", data=text, key=key, headers=headers)
    assert single.status_code == 400, single.text
    assert single.json()["error"] == "invalid_properties"
    assert "nested" in single.json()["message"] and "at most 8 levels" in single.json()["message"]
    batch = server.post(
        "/v1/batch/events",
        data=b'{"events":[' + GOOD + b"," + text + b"]}",
        key=key,
        headers={k: v + "-batch" for k, v in headers.items()},
    )
    assert batch.status_code == 200, batch.text
    assert batch.json()["accepted"] == 1
    assert [(e["index"], e["error"]) for e in batch.json()["errors"]] == [(1, "invalid_properties")]


# -- the fingerprint of any document orjson reads ----------------------------------------------------------


def test_a_document_of_any_depth_has_a_fingerprint():
    for depth in (253, 254, 255, 300, 1000, 1023):
        document = orjson.loads(nested(depth))
        assert len(fingerprint("/v1/events", document)) == 64, depth


def test_deep_fingerprints_ignore_key_order_and_see_every_value():
    def deep(inner: bytes) -> object:
        return orjson.loads(b'{"events":[{"properties":' + b'{"a":' * 300 + inner + b"}" * 300 + b"}]}")

    same = fingerprint("/p", deep(b'{"x":1,"y":[true,null,"s"]}'))
    assert fingerprint("/p", deep(b'{"y":[true,null,"s"],"x":1}')) == same
    assert fingerprint("/p", deep(b'{"x":1,"y":[true,null,"t"]}')) != same
    assert fingerprint("/p", deep(b'{"x":1.0,"y":[true,null,"s"]}')) != same
    assert fingerprint("/other", deep(b'{"x":1,"y":[true,null,"s"]}')) != same


def test_a_deep_document_is_written_as_orjson_writes_a_shallow_one():
    """The deep path writes the same canonical text as orjson, so no document has two fingerprints."""
    from ingest_api.idempotency import _canonical_deep

    documents = [
        {
            "b": [1, 2.5, -0.0, None, True, False],
            "a": {"é": "\u2028", "ü": {}, "z": []},
            "\U0001f600": "x",
            "": "\ud7ff\ue000",
        },
        [],
        {},
        "s",
        18446744073709551615,
        -9223372036854775808,
        1e308,
        None,
        orjson.loads(GOOD),
        orjson.loads(nested(200)),
    ]
    for document in documents:
        assert _canonical_deep(document) == orjson.dumps(document, option=orjson.OPT_SORT_KEYS), document
