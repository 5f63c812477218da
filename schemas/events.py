"""Validation and normalization of one FloKit event object (the front door's hot path).

    validator = EventValidator()              # build once, reuse (thread-safe)
    event = validator.validate(obj)           # normalized dict, or raises EventInvalid

The normalized event is exactly (keys in this order)::

    {"event": str, "user_id": str | None, "anonymous_id": str | None,
     "timestamp": "YYYY-MM-DDTHH:MM:SS.fffZ", "properties": dict}

One EventInvalid per event, for the first problem in field order: unknown
top-level fields, event, user_id, anonymous_id, identity, timestamp, properties.

`properties` in the result is the caller's dict itself (validated, not copied).

Field-level validation is a marshmallow Schema (the project's core dependency),
tuned for throughput: one schema instance per validator, built once (it holds
the validator's clock and strict_events); custom fields that skip marshmallow's
per-call validator plumbing; unknown fields checked with a set operation before
loading (the schema runs with unknown=EXCLUDE); no exception on the valid path;
properties serialized once (orjson) for the size check, whose bracket count
also lets flat properties skip the depth walk; timestamps formatted with table
lookups instead of isoformat().

Its throughput, and how much of it is marshmallow's own, is in bench/README.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypedDict, TypeVar, overload

import orjson
from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing
from marshmallow.types import ErrorMessages

from schemas.taxonomy import EVENTS, NUMERIC_RANGES, PROPERTY_TYPES, SCALAR_PYTHON_TYPES

__all__ = [
    "EventInvalid",
    "EventValidator",
    "ValidEvent",
    "validate_batch_shape",
    "EVENT_FIELDS",
    "EVENT_ERROR_CODES",
    "BATCH_ERROR_CODES",
    "MAX_BATCH_EVENTS",
    "MAX_EVENT_NAME_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_PROPERTIES_BYTES",
    "MAX_PROPERTIES_DEPTH",
    "MAX_PROPERTY_KEY_LENGTH",
    "MAX_FUTURE_SECONDS",
    "MIN_TIMESTAMP",
]

# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------

#: Event names: ^[a-z][a-z0-9_]{0,63}$.
MAX_EVENT_NAME_LENGTH = 64
#: user_id / anonymous_id: 1..256 characters once surrounding whitespace is stripped.
MAX_ID_LENGTH = 256
#: properties, serialized as compact JSON (orjson), at most 32 KiB.
MAX_PROPERTIES_BYTES = 32 * 1024
#: Nesting depth of properties; the properties object itself is level 1, so
#: {"a": {"b": [1]}} has depth 3.
MAX_PROPERTIES_DEPTH = 8
#: Longest property key (at any nesting level).
MAX_PROPERTY_KEY_LENGTH = 128
#: How far past the server clock an event timestamp may be (client clock skew).
MAX_FUTURE_SECONDS = 24 * 60 * 60
#: Earliest accepted timestamp.
MIN_TIMESTAMP = "2000-01-01T00:00:00Z"
#: Most events in one POST /v1/batch/events.
MAX_BATCH_EVENTS = 1000

#: The top-level fields of an event object, in the order they are checked.
EVENT_FIELDS: tuple[str, ...] = ("event", "user_id", "anonymous_id", "timestamp", "properties")

#: Every code validate() can raise.
EVENT_ERROR_CODES: tuple[str, ...] = (
    "invalid_event_object",
    "unknown_field",
    "missing_event",
    "invalid_event_name",
    "unknown_event",
    "invalid_user_id",
    "invalid_anonymous_id",
    "missing_identity",
    "missing_timestamp",
    "invalid_timestamp",
    "invalid_properties",
    "invalid_property_type",
)
#: Every code validate_batch_shape() can raise.
BATCH_ERROR_CODES: tuple[str, ...] = (
    "invalid_body",
    "invalid_batch",
    "unknown_field",
    "batch_empty",
    "batch_too_large",
)

_MIN_EPOCH = datetime.fromisoformat(MIN_TIMESTAMP).timestamp()
_UTC = UTC
_fromisoformat = datetime.fromisoformat
_TWO_DIGITS = tuple(f"{i:02d}" for i in range(100))
_MILLIS_Z = tuple(f".{i:03d}Z" for i in range(1000))
_FIELD_SET = frozenset(EVENT_FIELDS)
_EVENT_NAME = re.compile(rf"[a-z][a-z0-9_]{{0,{MAX_EVENT_NAME_LENGTH - 1}}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TAXONOMY_NAMES = frozenset(EVENTS)

# Known property name -> (accepted exact Python types, type name, (lowest, highest) value or None). string[]
# is accepted as a list here and its items are checked separately.
_LIST_OF_STRINGS = frozenset({list})
_KNOWN_PROPERTIES: dict[str, tuple[frozenset[type], str, tuple[float, float] | None]] = {
    name: (
        _LIST_OF_STRINGS if type_name == "string[]" else SCALAR_PYTHON_TYPES[type_name],
        type_name,
        NUMERIC_RANGES.get(type_name),
    )
    for name, type_name in PROPERTY_TYPES.items()
}
_INTEGER_LOW, _INTEGER_HIGH = NUMERIC_RANGES["integer"]
# What a number of each type can be, for messages.
_RANGE_WORDS = {
    "integer": f"64-bit integers, {_INTEGER_LOW} to {_INTEGER_HIGH}",
    "number": "finite 64-bit floats",
}


class ValidEvent(TypedDict):
    """What EventValidator.validate returns (keys in this order)."""

    event: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: str  # YYYY-MM-DDTHH:MM:SS.fffZ
    properties: dict[str, Any]  # the caller's own dict, validated


class EventInvalid(Exception):
    """An event (or batch body) the API rejects.

    code: stable machine code (see EVENT_ERROR_CODES / BATCH_ERROR_CODES).
    message: what to fix, starting with the field it concerns.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[EventInvalid], tuple[str, str]]:
        return (type(self), (self.code, self.message))


# --------------------------------------------------------------------------
# Helpers for messages
# --------------------------------------------------------------------------

_JSON_TYPE_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _show(value: object, limit: int = 60) -> str:
    """A short, JSON-flavoured rendering of what the client sent."""
    if isinstance(value, str):
        text = value if len(value) <= limit else value[:limit] + "…"
        return repr(text)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "…"
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _sent(value: object) -> str:
    """'string "7"', 'number 7.5', 'boolean true', 'an array', 'an object', 'null'."""
    kind = _JSON_TYPE_NAMES.get(type(value))
    if kind in ("array", "object"):
        return f"an {kind}"
    if kind is None:
        return f"a {type(value).__name__}"
    if kind == "null":
        return "null"
    return f"{kind} {_show(value)}"


class _Problem:
    """An EventInvalid-to-be, carried through marshmallow as a field error's
    message (marshmallow stores non-str messages as they are)."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


# marshmallow types a message as str | list | dict, but stores any other object as it is: the two places a
# _Problem is handed to it as a message say so to mypy.


def _fail(code: str, message: str) -> ValidationError:
    return ValidationError(_Problem(code, message))  # type: ignore[arg-type]


def _messages(**problems: _Problem) -> ErrorMessages:
    """A field's error_messages (marshmallow's keys: required, null) as _Problems."""
    return problems  # type: ignore[return-value]


# --------------------------------------------------------------------------
# marshmallow fields
# --------------------------------------------------------------------------


_T = TypeVar("_T")


class _Field(fields.Field[_T]):
    """Base for our fields. deserialize() is marshmallow's Field.deserialize
    minus the hooks these fields never use (field pre_load/post_load and
    `validate=` validators, whose And(*validators) marshmallow rebuilds on
    every call); required / allow_none / load_default keep their meaning."""

    # marshmallow's own two signatures (the implementation below is checked against them).
    @overload
    def deserialize(
        self, value: None, attr: str | None = None, data: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> _T | None: ...

    @overload
    def deserialize(
        self, value: Any, attr: str | None = None, data: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> _T: ...

    def deserialize(
        self, value: Any, attr: str | None = None, data: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> _T | None:
        if value is missing:
            if self.required:
                raise self.make_error("required")
            default = self.load_default
            loaded: _T | None = default() if callable(default) else default
            return loaded
        if value is None:
            if self.allow_none:
                return None
            raise self.make_error("null")
        return self._deserialize(value, attr, data, **kwargs)

    def _validate(self, value: Any) -> None:
        return None


class EventName(_Field[str]):
    parent: EventSchema  # the schema it is bound to (marshmallow types it Field | Schema | None)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        if type(value) is not str:
            raise _fail(
                "invalid_event_name",
                f"event: must be a string event name like paywall_viewed, got {_sent(value)}",
            )
        if value in _TAXONOMY_NAMES:
            return value
        if not _EVENT_NAME.fullmatch(value):
            raise _fail(
                "invalid_event_name",
                f"event: {_show(value)} is not a valid event name; use snake_case: a lowercase letter, "
                f"then lowercase letters, digits or _ (at most {MAX_EVENT_NAME_LENGTH} characters), "
                "e.g. paywall_viewed",
            )
        if self.parent.strict_events:
            raise _fail(
                "unknown_event",
                f"event: {_show(value)} is not in the event taxonomy "
                "(this server only accepts taxonomy events), e.g. paywall_viewed, subscription_started",
            )
        return value


class Identity(_Field[str]):
    """user_id / anonymous_id: a string, 1..MAX_ID_LENGTH characters once
    surrounding whitespace is stripped (the original is kept), no control
    characters. JSON null is the same as absent (marshmallow allow_none)."""

    def __init__(self, code: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.code = code

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        if type(value) is not str:
            raise _fail(self.code, f"{attr}: must be a string, got {_sent(value)}")
        stripped = value.strip()
        if not stripped:
            raise _fail(
                self.code, f"{attr}: must not be empty or only whitespace; omit it or send null when unknown"
            )
        if len(stripped) > MAX_ID_LENGTH:
            raise _fail(
                self.code, f"{attr}: is {len(stripped)} characters long; the limit is {MAX_ID_LENGTH}"
            )
        if not value.isprintable():
            bad = _CONTROL.search(value)
            if bad is not None:
                raise _fail(
                    self.code,
                    f"{attr}: contains the control character U+{ord(bad.group()):04X} "
                    f"at position {bad.start()}",
                )
        return value


class Timestamp(_Field[str]):
    """ISO 8601 datetime WITH a UTC offset (or Z) -> 'YYYY-MM-DDTHH:MM:SS.fffZ' in UTC."""

    parent: EventSchema  # the schema it is bound to (marshmallow types it Field | Schema | None)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        if type(value) is not str:
            raise _fail(
                "invalid_timestamp",
                "timestamp: must be an ISO 8601 datetime string with a UTC offset, "
                f"e.g. 2024-03-15T14:22:00Z, got {_sent(value)}",
            )
        try:
            dt = _fromisoformat(value)
        except ValueError:
            dt = _parse_fallback(value)
        if dt.tzinfo is None:
            raise _fail("invalid_timestamp", _no_offset_message(value, dt))
        epoch = dt.timestamp()  # before astimezone(): converting year 1 or 9999 can overflow
        if epoch < _MIN_EPOCH:
            raise _too_early(value)
        if epoch > self.parent.clock() + MAX_FUTURE_SECONDS:
            raise _fail(
                "invalid_timestamp",
                f"timestamp: {_show(value)} is in the future (more than {MAX_FUTURE_SECONDS // 3600} hours "
                "after the server clock); send when the event occurred, with the device's UTC offset",
            )
        if dt.tzinfo is not _UTC:
            dt = dt.astimezone(_UTC)
        # Table lookups: ~3x faster than isoformat()/strftime(). The year is
        # 2000..9999 here; milliseconds are truncated, never rounded.
        d2 = _TWO_DIGITS
        return (
            f"{dt.year}-{d2[dt.month]}-{d2[dt.day]}T{d2[dt.hour]}:{d2[dt.minute]}:{d2[dt.second]}"
            f"{_MILLIS_Z[dt.microsecond // 1000]}"
        )


def _parse_fallback(value: str) -> datetime:
    """Forms datetime.fromisoformat (3.11) rejects but RFC 3339 allows (a lowercase
    z); anything else is invalid_timestamp, a leap second told it is one."""
    dt = _with_lowercase_z(value)
    if dt is not None:
        return dt
    leap = _LEAP_SECOND.search(value)
    if leap is not None:
        head, tail = value[: leap.start()] + leap.group(1), value[leap.end() :]
        dt = _as_datetime(head + ":59" + tail)
        if dt is not None:
            offset = "" if dt.tzinfo is not None else "Z (or the device's UTC offset)"
            raise _fail(
                "invalid_timestamp",
                f"timestamp: {_show(value)} is a leap second (:60); leap seconds are not accepted: "
                f"send {head}:59.999{tail}{offset} or the next second",
            )
    raise _fail(
        "invalid_timestamp",
        f"timestamp: {_show(value)} is not an ISO 8601 datetime; send e.g. 2024-03-15T14:22:00Z "
        "or 2024-03-15T16:22:00+02:00",
    )


# HH:MM:60, with any fraction: second 60 (RFC 3339 allows it for leap seconds; Python's datetime has none).
_LEAP_SECOND = re.compile(r"(\d\d:\d\d):60(?:[.,]\d+)?")


def _with_lowercase_z(value: str) -> datetime | None:
    if value[-1:] == "z":
        try:
            return _fromisoformat(value[:-1] + "Z")
        except ValueError:
            pass
    return None


def _as_datetime(value: str) -> datetime | None:
    try:
        return _fromisoformat(value)
    except ValueError:
        return _with_lowercase_z(value)


def _no_offset_message(value: str, dt: datetime) -> str:
    if "T" not in value and "t" not in value and " " not in value:
        what = "is a date without a time of day or UTC offset"
    else:
        what = "has no UTC offset"
    example = dt.replace(microsecond=0).isoformat()
    return (
        f"timestamp: {_show(value)} {what}; timestamps without an offset are rejected rather than "
        f"guessed, so send UTC with a Z or the device's offset, e.g. {example}Z or {example}+02:00"
    )


def _too_early(value: str) -> ValidationError:
    return _fail(
        "invalid_timestamp",
        f"timestamp: {_show(value)} is before {MIN_TIMESTAMP}; send when the event occurred",
    )


class Properties(_Field[dict[str, Any]]):
    """A JSON object of custom key/values; known taxonomy properties are type-checked."""

    def deserialize(
        self, value: Any, attr: str | None = None, data: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if value is None or value is missing:  # null is the same as absent
            return {}
        return self._deserialize(value, attr, data, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _fail(
                "invalid_properties", f"properties: must be an object of key/values, got {_sent(value)}"
            )
        try:
            raw = orjson.dumps(value)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            # From parsed JSON only nesting can cause it (orjson reads 1024 levels, writes 254): say so.
            _check_nested(value)
            raise _fail("invalid_properties", f"properties: not representable as JSON ({exc})") from None
        if len(raw) > MAX_PROPERTIES_BYTES:
            raise _fail(
                "invalid_properties",
                f"properties: {len(raw)} bytes as JSON; the limit is {MAX_PROPERTIES_BYTES} bytes (32 KiB)",
            )
        # Every nested object/array contributes a '{' or '[' to the JSON, so when
        # the count of both is within the depth limit no walk is needed; nested
        # objects (the only place nested keys live) also force the walk.
        objects = raw.count(b"{")
        if objects > 1 or objects + raw.count(b"[") > MAX_PROPERTIES_DEPTH:
            _check_nested(value)
        known = _KNOWN_PROPERTIES
        for key, item in value.items():
            if len(key) > MAX_PROPERTY_KEY_LENGTH:
                raise _fail("invalid_properties", _long_key_message("properties", key))
            spec = known.get(key)
            if spec is None or item is None:
                continue
            accepted = spec[0]
            if type(item) not in accepted:
                raise _fail("invalid_property_type", _type_message(key, spec[1], item))
            if accepted is _LIST_OF_STRINGS:
                try:
                    "".join(item)  # C-speed "every item is a str" (TypeError otherwise)
                except TypeError:
                    raise _fail("invalid_property_type", _type_message(key, spec[1], item)) from None
            elif spec[2] is not None and not spec[2][0] <= item <= spec[2][1]:
                # A column of its type (Int64, Float64) could not hold it: JSONExtract would store NULL.
                raise _fail("invalid_property_type", _range_message(key, spec[1], item))
        return value


def _long_key_message(path: str, key: str) -> str:
    return (
        f"{path}: the key {_show(key, 40)} is {len(key)} characters long; "
        f"property keys are limited to {MAX_PROPERTY_KEY_LENGTH} characters"
    )


def _type_message(key: str, type_name: str, item: Any) -> str:
    if type_name == "string[]" and type(item) is list:
        index, bad = next((i, s) for i, s in enumerate(item) if type(s) is not str)
        got = f"an array whose item {index} is {_sent(bad)}"
    else:
        got = _sent(item)
    hint = ""
    if type_name == "integer" and type(item) is float:
        hint = " (a whole number without a decimal point)"
        if item.is_integer() and abs(item) >= -_INTEGER_LOW:
            # orjson reads an integer below -2**63 or past 2**64 - 1 as a float: the range is what is wrong.
            hint = f" (a whole number without a decimal point, in range: {_RANGE_WORDS['integer']})"
    elif type_name in ("integer", "number") and type(item) is str:
        hint = " (send the number itself, not a string)"
    return f"properties.{key}: expected {type_name}, got {got}{hint}; null is allowed to leave it unset"


def _range_message(key: str, type_name: str, item: Any) -> str:
    return (
        f"properties.{key}: {_show(item)} is out of range; {type_name} properties are stored as "
        f"{_RANGE_WORDS[type_name]}; null is allowed to leave it unset"
    )


_CONTAINERS = (dict, list, tuple)  # what orjson writes as JSON objects/arrays


def _check_nested(props: dict[str, Any]) -> None:
    """Depth and nested key-length checks (only for properties that nest).
    A path-free walk decides; the slower walk that names the path runs only
    to word the error."""
    if not _nested_ok(props, 1):
        _raise_nested_problem(props, 1, "properties")


def _nested_ok(container: Any, depth: int) -> bool:
    if depth > MAX_PROPERTIES_DEPTH:
        return False
    child_depth = depth + 1
    if isinstance(container, dict):
        for key, value in container.items():
            if depth > 1 and len(key) > MAX_PROPERTY_KEY_LENGTH:
                return False
            if isinstance(value, _CONTAINERS) and not _nested_ok(value, child_depth):
                return False
    else:
        for value in container:
            if isinstance(value, _CONTAINERS) and not _nested_ok(value, child_depth):
                return False
    return True


def _raise_nested_problem(container: Any, depth: int, path: str) -> None:
    if depth > MAX_PROPERTIES_DEPTH:
        raise _fail(
            "invalid_properties",
            f"{path}: nested {depth} levels deep; properties may nest at most {MAX_PROPERTIES_DEPTH} levels "
            "(the properties object is level 1)",
        )
    if isinstance(container, dict):
        for key, value in container.items():
            if depth > 1 and len(key) > MAX_PROPERTY_KEY_LENGTH:
                raise _fail("invalid_properties", _long_key_message(path, key))
            if isinstance(value, _CONTAINERS):
                _raise_nested_problem(value, depth + 1, f"{path}.{key}")
    else:
        for index, value in enumerate(container):
            if isinstance(value, _CONTAINERS):
                _raise_nested_problem(value, depth + 1, f"{path}[{index}]")


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------


class EventSchema(Schema):
    """Field-level validation of one event object. Errors come out as
    marshmallow field errors whose message is a _Problem(code, message)."""

    class Meta:
        # Unknown fields are rejected by EventValidator before load (a frozenset
        # check, and they must be reported first); EXCLUDE skips marshmallow's
        # per-load unknown-key set construction.
        unknown = EXCLUDE

    event = EventName(
        required=True,
        error_messages=_messages(
            required=_Problem("missing_event", "event: required; the event name, e.g. paywall_viewed"),
            null=_Problem("invalid_event_name", "event: must be an event name like paywall_viewed, got null"),
        ),
    )
    user_id = Identity("invalid_user_id", allow_none=True, load_default=None)
    anonymous_id = Identity("invalid_anonymous_id", allow_none=True, load_default=None)
    timestamp = Timestamp(
        required=True,
        error_messages=_messages(
            required=_Problem(
                "missing_timestamp",
                "timestamp: required; when the event occurred, ISO 8601 with a UTC offset, "
                "e.g. 2024-03-15T14:22:00Z",
            ),
            null=_Problem(
                "invalid_timestamp",
                "timestamp: must be an ISO 8601 datetime string with a UTC offset, "
                "e.g. 2024-03-15T14:22:00Z, got null",
            ),
        ),
    )
    properties = Properties()

    def __init__(
        self, *, strict_events: bool = False, clock: Callable[[], float] = time.time, **kwargs: Any
    ) -> None:
        self.strict_events = strict_events
        self.clock = clock
        super().__init__(**kwargs)


_MISSING_IDENTITY = (
    "user_id/anonymous_id: neither is present; send user_id (your user's id) or "
    "anonymous_id (a pre-login device id), or both"
)
# Error precedence once unknown fields are excluded; None marks the identity check.
_ERROR_ORDER = ("event", "user_id", "anonymous_id", None, "timestamp", "properties")


class EventValidator:
    """Validates and normalizes one event object. Build once and reuse: it
    holds a marshmallow schema instance; validate() is thread-safe."""

    __slots__ = ("_load", "strict_events", "clock")

    def __init__(self, *, strict_events: bool = False, clock: Callable[[], float] = time.time) -> None:
        self.strict_events = strict_events
        self.clock = clock
        self._load = EventSchema(strict_events=strict_events, clock=clock).load

    def validate(self, obj: object) -> ValidEvent:
        """Return the normalized event, or raise EventInvalid for the first problem."""
        if type(obj) is not dict:
            if not isinstance(obj, dict):
                raise EventInvalid(
                    "invalid_event_object",
                    "event object: each event must be a JSON object like "
                    f'{{"event": ..., "user_id": ..., "timestamp": ...}}, got {_sent(obj)}',
                )
        if not obj.keys() <= _FIELD_SET:
            key = next(k for k in obj if k not in _FIELD_SET)
            raise EventInvalid(
                "unknown_field",
                f"{_show(key, 40) if isinstance(key, str) else _show(key)}: unknown field; an event has only "
                "event, user_id, anonymous_id, timestamp and properties; put custom data in properties",
            )
        try:
            result: ValidEvent = self._load(obj)
        except ValidationError as exc:
            raise _first_problem(exc.messages_dict, obj) from None
        if result["user_id"] is None and result["anonymous_id"] is None:
            raise EventInvalid("missing_identity", _MISSING_IDENTITY)
        return result


def _first_problem(errors: Mapping[str, Any], obj: Mapping[Any, Any]) -> EventInvalid:
    for field in _ERROR_ORDER:
        if field is None:
            if obj.get("user_id") is None and obj.get("anonymous_id") is None:
                return EventInvalid("missing_identity", _MISSING_IDENTITY)
            continue
        problem = errors.get(field)
        if problem is None:
            continue
        if isinstance(problem, _Problem):
            return EventInvalid(problem.code, problem.message)
        # Not one of ours (should not happen): keep the API contract anyway.
        code = {
            "event": "invalid_event_name",
            "timestamp": "invalid_timestamp",
            "properties": "invalid_properties",
        }.get(field, f"invalid_{field}")
        return EventInvalid(code, f"{field}: {problem}")
    raise AssertionError(f"marshmallow reported errors outside the event fields: {errors!r}")


def validate_batch_shape(obj: object) -> list[object]:
    """Check a POST /v1/batch/events body and return its `events` list.

    Checked in this order: not an object -> invalid_body; `events` missing or
    not an array -> invalid_batch; another top-level key -> unknown_field;
    empty -> batch_empty; more than MAX_BATCH_EVENTS -> batch_too_large.
    The elements themselves are left to EventValidator.validate (one by one).
    """
    if not isinstance(obj, dict):
        raise EventInvalid(
            "invalid_body",
            f'body: must be a JSON object {{"events": [...]}}, got {_sent(obj)}',
        )
    events = obj.get("events")
    if "events" not in obj:
        hint = ""
        if "event" in obj:
            hint = '; this looks like a single event: POST it to /v1/events or wrap it as {"events": [event]}'
        raise EventInvalid(
            "invalid_batch", f'events: required; the body must be {{"events": [event, ...]}}{hint}'
        )
    if type(events) is not list:
        raise EventInvalid("invalid_batch", f"events: must be an array of event objects, got {_sent(events)}")
    if len(obj) > 1:
        key = next(k for k in obj if k != "events")
        raise EventInvalid(
            "unknown_field",
            f'{_show(key, 40)}: unknown field; a batch body has only "events" '
            "(put per-event data in each event)",
        )
    if not events:
        raise EventInvalid("batch_empty", "events: the array is empty; send 1 to 1000 events")
    if len(events) > MAX_BATCH_EVENTS:
        raise EventInvalid(
            "batch_too_large",
            f"events: {len(events)} events in one batch; the limit is {MAX_BATCH_EVENTS}, "
            "split it into several requests",
        )
    return events
