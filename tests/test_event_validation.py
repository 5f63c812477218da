"""schemas.events: validation and normalization of one event object, and the batch body shape."""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta, timezone

import marshmallow
import orjson
import pytest

from schemas import events as ev
from schemas.events import (
    BATCH_ERROR_CODES,
    EVENT_ERROR_CODES,
    MAX_BATCH_EVENTS,
    MAX_ID_LENGTH,
    MAX_PROPERTIES_BYTES,
    MAX_PROPERTIES_DEPTH,
    MAX_PROPERTY_KEY_LENGTH,
    EventInvalid,
    EventValidator,
    validate_batch_shape,
)
from schemas.taxonomy import EVENTS, PROPERTY_TYPES

# The server clock for these tests: 2024-03-16T00:00:00Z.
NOW = datetime(2024, 3, 16, tzinfo=UTC).timestamp()

PAYWALL_VIEWED = {
    "event": "paywall_viewed",
    "anonymous_id": "dev_8f14e45f",
    "timestamp": "2024-03-15T14:22:00Z",
    "properties": {
        "paywall_id": "pw_annual_v3",
        "offer_id": "offer_intro_50pct",
        "plan_ids": ["plan_annual_usd", "plan_monthly_usd"],
        "context": "onboarding_step_3",
    },
}
TRIAL_STARTED = {
    "event": "trial_started",
    "user_id": "usr_42",
    "timestamp": "2024-03-15T16:22:05.123+02:00",
    "properties": {"plan_id": "plan_annual_usd", "trial_length_days": 7},
}


@pytest.fixture
def v() -> EventValidator:
    return EventValidator(clock=lambda: NOW)


def event(**changes) -> dict:
    """A valid event with some fields replaced; a value of ... removes the field."""
    obj = copy.deepcopy(TRIAL_STARTED)
    for key, value in changes.items():
        if value is ...:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


def reject(v: EventValidator, obj: object, code: str, *mentions: str) -> EventInvalid:
    with pytest.raises(EventInvalid) as info:
        v.validate(obj)
    err = info.value
    assert err.code == code, err.message
    for text in mentions:
        assert text in err.message, (text, err.message)
    return err


# --------------------------------------------------------------------------
# Valid events and normalization
# --------------------------------------------------------------------------


def test_reference_paywall_viewed_normalizes_exactly(v):
    out = v.validate(copy.deepcopy(PAYWALL_VIEWED))
    assert out == {
        "event": "paywall_viewed",
        "user_id": None,
        "anonymous_id": "dev_8f14e45f",
        "timestamp": "2024-03-15T14:22:00.000Z",
        "properties": PAYWALL_VIEWED["properties"],
    }
    assert list(out) == ["event", "user_id", "anonymous_id", "timestamp", "properties"]


def test_reference_trial_started_normalizes_exactly(v):
    out = v.validate(copy.deepcopy(TRIAL_STARTED))
    assert out == {
        "event": "trial_started",
        "user_id": "usr_42",
        "anonymous_id": None,
        "timestamp": "2024-03-15T14:22:05.123Z",
        "properties": {"plan_id": "plan_annual_usd", "trial_length_days": 7},
    }
    assert list(out) == ["event", "user_id", "anonymous_id", "timestamp", "properties"]


def test_normalized_event_is_json_serializable(v):
    out = v.validate(copy.deepcopy(PAYWALL_VIEWED))
    assert orjson.loads(orjson.dumps(out)) == out


@pytest.mark.parametrize(
    "sent, normalized",
    [
        ("2024-03-15T14:22:00Z", "2024-03-15T14:22:00.000Z"),
        ("2024-03-15T14:22:00+00:00", "2024-03-15T14:22:00.000Z"),
        ("2024-03-15T14:22:00-00:00", "2024-03-15T14:22:00.000Z"),
        ("2024-03-15T16:22:00+02:00", "2024-03-15T14:22:00.000Z"),
        ("2024-03-15T19:52:00+05:30", "2024-03-15T14:22:00.000Z"),
        ("2024-03-15T16:22:00+0200", "2024-03-15T14:22:00.000Z"),
        # crossing midnight (and a month boundary) while converting to UTC
        ("2024-02-29T22:30:00-05:00", "2024-03-01T03:30:00.000Z"),
        ("2024-03-15T00:30:00+01:00", "2024-03-14T23:30:00.000Z"),
        # fractional seconds: padded to ms, or truncated (never rounded)
        ("2024-03-15T14:22:00.5Z", "2024-03-15T14:22:00.500Z"),
        ("2024-03-15T14:22:00.12Z", "2024-03-15T14:22:00.120Z"),
        ("2024-03-15T14:22:00.123Z", "2024-03-15T14:22:00.123Z"),
        ("2024-03-15T14:22:00.123999Z", "2024-03-15T14:22:00.123Z"),
        ("2024-03-15T14:22:59.999999+02:00", "2024-03-15T12:22:59.999Z"),
        ("2024-03-15T14:22:00.123456789Z", "2024-03-15T14:22:00.123Z"),  # nanoseconds (Go, JS libs)
        ("2024-03-15T14:22:00,25Z", "2024-03-15T14:22:00.250Z"),  # ISO 8601 decimal comma
        # other ISO 8601 / RFC 3339 spellings
        ("2024-03-15t14:22:00z", "2024-03-15T14:22:00.000Z"),
        ("2024-03-15 14:22:00Z", "2024-03-15T14:22:00.000Z"),
        ("2024-03-15T14:22Z", "2024-03-15T14:22:00.000Z"),
        ("20240315T142200Z", "2024-03-15T14:22:00.000Z"),
    ],
)
def test_timestamp_normalized_to_utc_milliseconds(v, sent, normalized):
    assert v.validate(event(timestamp=sent))["timestamp"] == normalized


def test_timestamp_normalization_matches_reference_implementation(v):
    """Random instants and offsets against datetime's own arithmetic and formatting."""
    rng = random.Random(20240315)
    lo = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
    for _ in range(2000):
        instant = datetime.fromtimestamp(rng.uniform(lo, NOW), UTC).replace(
            microsecond=rng.randrange(1_000_000)
        )
        offset = timedelta(minutes=15 * rng.randrange(-48, 57))
        local = instant.astimezone(timezone(offset))
        sent = local.isoformat()
        expected = instant.strftime("%Y-%m-%dT%H:%M:%S") + f".{instant.microsecond // 1000:03d}Z"
        assert v.validate(event(timestamp=sent))["timestamp"] == expected, sent


def test_properties_absent_or_null_become_empty_object(v):
    assert v.validate(event(properties=...))["properties"] == {}
    assert v.validate(event(properties=None))["properties"] == {}
    assert v.validate(event(properties={}))["properties"] == {}


def test_identity_variants(v):
    out = v.validate(event(user_id="usr_1", anonymous_id="dev_1"))
    assert (out["user_id"], out["anonymous_id"]) == ("usr_1", "dev_1")
    out = v.validate(event(user_id=None, anonymous_id="dev_1"))  # null counts as absent
    assert (out["user_id"], out["anonymous_id"]) == (None, "dev_1")
    out = v.validate(event(user_id="usr_1", anonymous_id=None))
    assert (out["user_id"], out["anonymous_id"]) == ("usr_1", None)


def test_identity_is_kept_as_sent_not_stripped(v):
    assert v.validate(event(user_id="  usr_1 "))["user_id"] == "  usr_1 "
    padded = "   " + "u" * MAX_ID_LENGTH + "   "  # 256 characters once stripped
    assert v.validate(event(user_id=padded))["user_id"] == padded
    assert v.validate(event(anonymous_id="x", user_id=...))["anonymous_id"] == "x"
    assert v.validate(event(user_id="üser ✓ 用户"))["user_id"] == "üser ✓ 用户"


def test_custom_snake_case_events_are_accepted_by_default(v):
    assert v.validate(event(event="onboarding_quiz_answered"))["event"] == "onboarding_quiz_answered"
    assert v.validate(event(event="a"))["event"] == "a"
    assert v.validate(event(event="a" + "b" * 63))["event"] == "a" + "b" * 63


def test_every_taxonomy_event_is_accepted_strictly():
    strict = EventValidator(strict_events=True, clock=lambda: NOW)
    for name in EVENTS:
        assert strict.validate(event(event=name))["event"] == name


def test_unknown_properties_are_free_form(v):
    props = {
        "mood": "happy",
        "score": 3.5,
        "tags": [1, "a", None],
        "nested": {"deep": {"x": [True]}},
        "n": None,
    }
    assert v.validate(event(properties=props))["properties"] == props


def test_known_properties_accept_their_types_and_null(v):
    props = {
        "plan_id": "plan_annual_usd",
        "plan_ids": [],
        "price": 59.99,
        "revenue": 60,  # number accepts integers
        "trial_length_days": 7,
        "is_trial": False,
        "currency": "USD",
        "offer_id": None,  # null = unset, for any known property
        "trial_length_days_extra": "free-form",
    }
    assert v.validate(event(properties=props))["properties"] == props


def test_known_property_types_apply_to_custom_events_too(v):
    reject(
        v,
        event(event="my_custom_event", properties={"price": "9.99"}),
        "invalid_property_type",
        "properties.price",
    )


def test_future_limit_is_24_hours_after_the_clock(v):
    assert v.validate(event(timestamp="2024-03-16T23:59:59Z"))  # NOW + 24h - 1s
    assert v.validate(event(timestamp="2024-03-17T00:00:00Z"))  # exactly NOW + 24h
    reject(v, event(timestamp="2024-03-17T00:00:00.001Z"), "invalid_timestamp", "timestamp", "future")
    assert v.validate(event(timestamp="2024-03-17T01:00:00+01:00"))  # the limit, with an offset
    reject(v, event(timestamp="2024-03-17T01:00:01+01:00"), "invalid_timestamp", "timestamp", "future")


def test_clock_is_injected():
    late = EventValidator(clock=lambda: NOW + 10 * 86400)
    assert late.validate(event(timestamp="2024-03-20T00:00:00Z"))
    with pytest.raises(EventInvalid) as info:
        EventValidator(clock=lambda: NOW).validate(event(timestamp="2024-03-20T00:00:00Z"))
    assert info.value.code == "invalid_timestamp"


def test_earliest_timestamp_is_2000(v):
    assert v.validate(event(timestamp="2000-01-01T00:00:00Z"))["timestamp"] == "2000-01-01T00:00:00.000Z"
    assert v.validate(event(timestamp="2000-01-01T00:30:00-01:00"))["timestamp"] == "2000-01-01T01:30:00.000Z"
    reject(v, event(timestamp="1999-12-31T23:59:59.999Z"), "invalid_timestamp", "timestamp", "2000-01-01")
    reject(v, event(timestamp="2000-01-01T00:30:00+01:00"), "invalid_timestamp", "timestamp", "2000-01-01")
    reject(v, event(timestamp="1970-01-01T00:00:00Z"), "invalid_timestamp", "timestamp")


def test_extreme_years_do_not_crash(v):
    reject(v, event(timestamp="0001-01-01T00:00:00+01:00"), "invalid_timestamp", "timestamp")
    reject(v, event(timestamp="9999-12-31T23:59:59-01:00"), "invalid_timestamp", "timestamp", "future")


def test_does_not_mutate_input(v):
    obj = event(properties={"price": 1})
    before = copy.deepcopy(obj)
    v.validate(obj)
    assert obj == before


def test_validation_runs_on_a_marshmallow_schema():
    assert isinstance(ev.EventSchema(), marshmallow.Schema)


# --------------------------------------------------------------------------
# Error codes (each asserts the code and that the message names the field)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [[], [PAYWALL_VIEWED], "paywall_viewed", 42, None, True, 1.5])
def test_invalid_event_object(v, obj):
    reject(v, obj, "invalid_event_object", "event", "JSON object")


def test_unknown_field_is_named_and_points_to_properties(v):
    err = reject(v, event(plan_id="plan_annual_usd"), "unknown_field", "plan_id", "properties")
    assert "custom data" in err.message


def test_unknown_field_is_reported_first(v):
    obj = {"context": "x", "event": 5, "timestamp": "nope", "properties": []}
    reject(v, obj, "unknown_field", "context")


def test_missing_event(v):
    reject(v, event(event=...), "missing_event", "event")


@pytest.mark.parametrize(
    "name",
    [
        None,
        7,
        True,
        ["paywall_viewed"],
        {"name": "x"},
        "",
        "PaywallViewed",
        "paywall-viewed",
        "paywall viewed",
        "1paywall",
        "_paywall",
        "paywall_viewed\n",
        "pâywall",
        "a" + "b" * 64,
    ],
)
def test_invalid_event_name(v, name):
    reject(v, event(event=name), "invalid_event_name", "event")


def test_unknown_event_only_when_strict():
    strict = EventValidator(strict_events=True, clock=lambda: NOW)
    reject(
        strict, event(event="onboarding_quiz_answered"), "unknown_event", "event", "onboarding_quiz_answered"
    )
    # a malformed name is still invalid_event_name, strict or not
    reject(strict, event(event="Bad-Name"), "invalid_event_name", "event")
    assert EventValidator(clock=lambda: NOW).validate(event(event="onboarding_quiz_answered"))


@pytest.mark.parametrize(
    "field, code", [("user_id", "invalid_user_id"), ("anonymous_id", "invalid_anonymous_id")]
)
@pytest.mark.parametrize(
    "value",
    [
        42,
        4.2,
        True,
        ["usr"],
        {"id": "usr"},
        "",
        " ",
        "\t \n",
        "u" * (MAX_ID_LENGTH + 1),
        "  " + "u" * (MAX_ID_LENGTH + 1) + "  ",
        "usr\x00",
        "usr\n1",
        "usr\x7f",
        "us\u0085r",
        "\x1busr",
    ],
)
def test_invalid_identity(v, field, code, value):
    other = "anonymous_id" if field == "user_id" else "user_id"
    obj = event(**{field: value, other: "ok_id"})
    reject(v, obj, code, field)


def test_identity_length_limit_is_inclusive(v):
    assert v.validate(event(user_id="u" * MAX_ID_LENGTH))
    assert v.validate(event(user_id=..., anonymous_id="a" * MAX_ID_LENGTH))


@pytest.mark.parametrize(
    "changes", [{"user_id": ...}, {"user_id": None}, {"user_id": None, "anonymous_id": None}]
)
def test_missing_identity(v, changes):
    obj = event(**{"anonymous_id": ..., **changes})
    err = reject(v, obj, "missing_identity", "user_id", "anonymous_id")
    assert err.message.startswith("user_id/anonymous_id:")


def test_missing_timestamp(v):
    reject(v, event(timestamp=...), "missing_timestamp", "timestamp")


@pytest.mark.parametrize("value", [None, 1710512520, 1710512520.5, True, ["2024-03-15T14:22:00Z"], {}])
def test_timestamp_must_be_a_string(v, value):
    reject(v, event(timestamp=value), "invalid_timestamp", "timestamp", "ISO 8601")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-03-15T25:00:00Z",
        "2024-03-15T14:22:61Z",
        "2024-02-30T00:00:00Z",
        "2024-13-01T23:59:60Z",
        "15/03/2024 14:22 +00:00",
        "2024-03-15T14:22:00+25:00",
        " 2024-03-15T14:22:00Z",
        "2024-03-15T14:22:00Zz",
        "Fri, 15 Mar 2024 14:22:00 GMT",
    ],
)
def test_timestamp_not_iso8601(v, value):
    reject(v, event(timestamp=value), "invalid_timestamp", "timestamp", "ISO 8601")


@pytest.mark.parametrize(
    "value, instead",
    [
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999Z"),
        ("2016-12-31T23:59:60.250Z", "2016-12-31T23:59:59.999Z"),
        ("2017-01-01T00:59:60+01:00", "2017-01-01T00:59:59.999+01:00"),
        ("2016-12-31 23:59:60z", "2016-12-31 23:59:59.999z"),
        ("2024-03-15T14:22:60Z", "2024-03-15T14:22:59.999Z"),
        ("2016-12-31T23:59:60", "2016-12-31T23:59:59.999Z (or the device's UTC offset)"),
    ],
)
def test_a_leap_second_is_refused_saying_so(v, value, instead):
    err = reject(
        v,
        event(timestamp=value),
        "invalid_timestamp",
        repr(value),
        "leap second",
        "(:60)",
        f"send {instead} or the next second",
    )
    assert "not an ISO 8601" not in err.message


@pytest.mark.parametrize(
    "value", ["2024-03-15 14:22", "2024-03-15T14:22:00", "2024-03-15T14:22:00.123", "2024-03-15"]
)
def test_timestamp_without_offset_is_rejected_not_guessed(v, value):
    err = reject(
        v, event(timestamp=value), "invalid_timestamp", "timestamp", repr(value), "offset", "rejected"
    )
    assert "Z" in err.message  # suggests a fix


def test_timestamp_without_offset_message_suggests_the_fix(v):
    err = reject(v, event(timestamp="2024-03-15 14:22"), "invalid_timestamp")
    assert err.message.startswith("timestamp: '2024-03-15 14:22' has no UTC offset")
    assert "2024-03-15T14:22:00Z" in err.message


@pytest.mark.parametrize("value", [[], ["a"], "k=v", 3, True])
def test_properties_must_be_an_object(v, value):
    reject(v, event(properties=value), "invalid_properties", "properties", "object")


def test_properties_size_limit(v):
    overhead = len(orjson.dumps({"blob": ""}))
    at_limit = {"blob": "x" * (MAX_PROPERTIES_BYTES - overhead)}
    assert len(orjson.dumps(at_limit)) == MAX_PROPERTIES_BYTES
    assert v.validate(event(properties=at_limit))
    over = {"blob": "x" * (MAX_PROPERTIES_BYTES - overhead + 1)}
    reject(v, event(properties=over), "invalid_properties", "properties", str(MAX_PROPERTIES_BYTES))


def test_properties_size_counts_utf8_bytes(v):
    # 3 bytes per character in UTF-8: under the limit in characters, over it in bytes
    over = {"blob": "€" * (MAX_PROPERTIES_BYTES // 3)}
    reject(v, event(properties=over), "invalid_properties", "properties")


def nest(depth: int, leaf: object = 1, use_lists: bool = False) -> dict:
    """A properties object `depth` levels deep (the properties object is level 1)."""
    value: object = leaf
    for level in range(depth - 1):
        value = [value] if use_lists and level % 2 else {"k": value}
    return {"k": value}


@pytest.mark.parametrize("use_lists", [False, True])
def test_properties_depth_limit(v, use_lists):
    assert v.validate(event(properties=nest(MAX_PROPERTIES_DEPTH, use_lists=use_lists)))
    reject(
        v,
        event(properties=nest(MAX_PROPERTIES_DEPTH + 1, use_lists=use_lists)),
        "invalid_properties",
        "properties.k",
        "nested",
        str(MAX_PROPERTIES_DEPTH),
    )


def test_properties_depth_counts_empty_containers(v):
    reject(v, event(properties=nest(MAX_PROPERTIES_DEPTH, leaf={})), "invalid_properties", "properties")
    assert v.validate(event(properties=nest(MAX_PROPERTIES_DEPTH - 1, leaf=[])))


def test_properties_depth_not_fooled_by_brackets_in_strings(v):
    props = {"note": "{[{[{[{[{[{[ not nested ]}]}]}]}]}]}", "list": [[1], [2], [3], [4], [5], [6], [7], [8]]}
    assert v.validate(event(properties=props))


def test_property_key_length_limit(v):
    assert v.validate(event(properties={"k" * MAX_PROPERTY_KEY_LENGTH: 1}))
    reject(
        v,
        event(properties={"k" * (MAX_PROPERTY_KEY_LENGTH + 1): 1}),
        "invalid_properties",
        "properties",
        str(MAX_PROPERTY_KEY_LENGTH),
    )


def test_nested_property_key_length_limit(v):
    assert v.validate(event(properties={"outer": {"k" * MAX_PROPERTY_KEY_LENGTH: 1}}))
    reject(
        v,
        event(properties={"outer": [{"k" * (MAX_PROPERTY_KEY_LENGTH + 1): 1}]}),
        "invalid_properties",
        "properties.outer[0]",
        str(MAX_PROPERTY_KEY_LENGTH),
    )


def test_properties_not_representable_as_json(v):
    reject(v, event(properties={"s": {1, 2}}), "invalid_properties", "properties")
    reject(v, event(properties={1: "non-string key"}), "invalid_properties", "properties")


@pytest.mark.parametrize(
    "prop, value, expected, sent",
    [
        ("trial_length_days", "7", "integer", "string '7'"),
        ("trial_length_days", 7.0, "integer", "number 7.0"),
        ("trial_length_days", 7.5, "integer", "number 7.5"),
        ("trial_length_days", True, "integer", "boolean true"),
        ("price", "9.99", "number", "string '9.99'"),
        ("price", False, "number", "boolean false"),
        ("price", [9.99], "number", "an array"),
        ("is_trial", "true", "boolean", "string 'true'"),
        ("is_trial", 1, "boolean", "integer 1"),
        ("plan_id", 123, "string", "integer 123"),
        ("plan_id", {"id": "x"}, "string", "an object"),
        ("plan_ids", "plan_annual_usd", "string[]", "string 'plan_annual_usd'"),
        ("plan_ids", ["plan_annual_usd", 2], "string[]", "item 1 is integer 2"),
        ("plan_ids", ["plan_annual_usd", None], "string[]", "item 1 is null"),
        ("plan_ids", [["nested"]], "string[]", "item 0 is an array"),
        ("currency", 840, "string", "integer 840"),
    ],
)
def test_invalid_property_type(v, prop, value, expected, sent):
    err = reject(
        v,
        event(properties={"plan_id": "plan_annual_usd", prop: value}),
        "invalid_property_type",
        f"properties.{prop}",
        f"expected {expected}",
        sent,
    )
    assert err.message.startswith(f"properties.{prop}:")


def test_integer_properties_hold_what_an_int64_column_holds(v):
    """Past Int64 the typed column would store NULL: refused, saying why (docs/analytics.md)."""
    for value in (2**63 - 1, -(2**63), 0):
        assert v.validate(event(properties={"renewal_number": value}))["properties"] == {
            "renewal_number": value
        }
    for value in (2**63, 2**64 - 1):
        err = reject(
            v,
            event(properties={"renewal_number": value}),
            "invalid_property_type",
            f"properties.renewal_number: {value} is out of range",
            "64-bit",
            str(2**63 - 1),
        )
        assert "null is allowed" in err.message


def test_an_integer_past_64_bits_is_told_the_range(v):
    # orjson reads an integer past 2**64 - 1 (or below -2**63) as a float: a whole number, out of range.
    for text in (b"18446744073709551616", b"-9223372036854775809", b"1e19"):
        sent = orjson.loads(text)
        assert type(sent) is float
        reject(
            v,
            event(properties={"trial_length_days": sent}),
            "invalid_property_type",
            "properties.trial_length_days",
            "in range",
            "64-bit",
            str(-(2**63)),
        )
    err = reject(v, event(properties={"trial_length_days": 7.0}), "invalid_property_type")
    assert "without a decimal point" in err.message and "range" not in err.message


def test_number_properties_hold_what_a_float64_column_holds(v):
    for value in (2**64 - 1, 1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0):
        assert v.validate(event(properties={"price": value}))
    # Not from JSON (orjson refuses NaN, and 1e400 as infinity), but a Python caller could pass them.
    for value in (float("nan"), float("inf"), float("-inf")):
        reject(
            v,
            event(properties={"price": value}),
            "invalid_property_type",
            "properties.price",
            "out of range",
            "finite",
        )


def test_every_known_property_is_type_checked(v):
    wrong = {"string": 1, "integer": "1", "number": "1", "boolean": "yes", "string[]": [1]}
    for name, type_name in PROPERTY_TYPES.items():
        reject(
            v,
            event(properties={name: wrong[type_name]}),
            "invalid_property_type",
            f"properties.{name}",
            type_name,
        )


# --------------------------------------------------------------------------
# One error per event, first problem in field order
# --------------------------------------------------------------------------


def test_error_order_follows_field_order(v):
    everything_wrong = {
        "event": "Bad Name",
        "user_id": 5,
        "anonymous_id": "",
        "timestamp": "x",
        "properties": [],
    }
    reject(v, everything_wrong, "invalid_event_name")
    del everything_wrong["event"]
    reject(v, everything_wrong, "missing_event")
    everything_wrong["event"] = "ok"
    reject(v, everything_wrong, "invalid_user_id")
    everything_wrong["user_id"] = None
    reject(v, everything_wrong, "invalid_anonymous_id")
    everything_wrong["anonymous_id"] = None
    reject(v, everything_wrong, "missing_identity")
    everything_wrong["anonymous_id"] = "dev"
    reject(v, everything_wrong, "invalid_timestamp")
    del everything_wrong["timestamp"]
    reject(v, everything_wrong, "missing_timestamp")
    everything_wrong["timestamp"] = "2024-03-15T14:22:00Z"
    reject(v, everything_wrong, "invalid_properties")
    everything_wrong["properties"] = {"price": "1"}
    reject(v, everything_wrong, "invalid_property_type")
    everything_wrong["properties"] = {"price": 1}
    assert v.validate(everything_wrong)


def test_missing_identity_comes_before_timestamp_and_properties(v):
    reject(v, {"event": "e", "timestamp": "bad", "properties": 1}, "missing_identity")


def test_future_timestamp_comes_before_properties(v):
    reject(
        v, event(timestamp="2030-01-01T00:00:00Z", properties={"price": "x"}), "invalid_timestamp", "future"
    )


def test_every_event_error_code_is_exercised(v):
    """Guards EVENT_ERROR_CODES against drift: each listed code can be produced."""
    strict = EventValidator(strict_events=True, clock=lambda: NOW)
    produced = set()
    cases = [
        (v, []),
        (v, event(extra=1)),
        (v, event(event=...)),
        (v, event(event="X")),
        (strict, event(event="custom_x")),
        (v, event(user_id=1)),
        (v, event(anonymous_id=1)),
        (v, event(user_id=...)),
        (v, event(timestamp=...)),
        (v, event(timestamp="x")),
        (v, event(properties=[])),
        (v, event(properties={"price": "1"})),
    ]
    for validator, obj in cases:
        with pytest.raises(EventInvalid) as info:
            validator.validate(obj)
        produced.add(info.value.code)
    assert produced == set(EVENT_ERROR_CODES)


def test_event_invalid_carries_code_and_message():
    err = EventInvalid("invalid_timestamp", "timestamp: nope")
    assert isinstance(err, Exception)
    assert (err.code, err.message) == ("invalid_timestamp", "timestamp: nope")
    assert "invalid_timestamp" in str(err)


def test_limits_are_module_constants():
    assert ev.MAX_PROPERTIES_BYTES == 32 * 1024
    assert ev.MAX_PROPERTIES_DEPTH == 8
    assert ev.MAX_PROPERTY_KEY_LENGTH == 128
    assert ev.MAX_ID_LENGTH == 256
    assert ev.MAX_FUTURE_SECONDS == 24 * 3600
    assert ev.MAX_EVENT_NAME_LENGTH == 64
    assert ev.MIN_TIMESTAMP == "2000-01-01T00:00:00Z"
    assert MAX_BATCH_EVENTS == 1000


def test_validator_is_reusable_across_many_events(v):
    for i in range(200):
        obj = event(user_id=f"usr_{i}", timestamp=f"2024-03-15T14:{i % 60:02d}:00Z")
        assert v.validate(obj)["user_id"] == f"usr_{i}"
    reject(v, event(timestamp="bad"), "invalid_timestamp")
    assert v.validate(copy.deepcopy(PAYWALL_VIEWED))["timestamp"] == "2024-03-15T14:22:00.000Z"


# --------------------------------------------------------------------------
# Batch body shape
# --------------------------------------------------------------------------


def test_batch_shape_returns_the_events():
    events = [PAYWALL_VIEWED, TRIAL_STARTED]
    assert validate_batch_shape({"events": events}) is events
    assert len(validate_batch_shape({"events": [{}] * MAX_BATCH_EVENTS})) == MAX_BATCH_EVENTS
    # elements are not validated here
    assert validate_batch_shape({"events": [1, "x", None]}) == [1, "x", None]


def batch_reject(obj: object, code: str, *mentions: str) -> EventInvalid:
    with pytest.raises(EventInvalid) as info:
        validate_batch_shape(obj)
    assert info.value.code == code, info.value.message
    for text in mentions:
        assert text in info.value.message, (text, info.value.message)
    return info.value


@pytest.mark.parametrize("body", [[PAYWALL_VIEWED], "events", 1, None, True])
def test_batch_invalid_body(body):
    batch_reject(body, "invalid_body", "body", "events")


@pytest.mark.parametrize(
    "body", [{}, {"events": None}, {"events": {"0": PAYWALL_VIEWED}}, {"events": "[]"}, {"batch": []}]
)
def test_batch_invalid_batch(body):
    batch_reject(body, "invalid_batch", "events")


def test_batch_single_event_posted_to_batch_endpoint_gets_a_hint():
    err = batch_reject(copy.deepcopy(PAYWALL_VIEWED), "invalid_batch", "events")
    assert "/v1/events" in err.message


def test_batch_empty():
    batch_reject({"events": []}, "batch_empty", "events")


def test_batch_too_large():
    batch_reject({"events": [{}] * (MAX_BATCH_EVENTS + 1)}, "batch_too_large", "events", "1001", "1000")


def test_batch_unknown_field():
    batch_reject({"events": [PAYWALL_VIEWED], "sent_at": "2024-03-15T14:22:00Z"}, "unknown_field", "sent_at")


def test_batch_error_codes_are_listed():
    produced = set()
    for body in ([], {}, {"events": [], "x": 1}, {"events": []}, {"events": [{}] * 1001}):
        with pytest.raises(EventInvalid) as info:
            validate_batch_shape(body)
        produced.add(info.value.code)
    assert produced == set(BATCH_ERROR_CODES)
