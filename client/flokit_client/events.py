"""One tracked event, as the JSON the API takes.

The event is serialised when it is tracked, so a caller changing its properties dict afterwards changes
nothing that is sent, and a value JSON cannot carry is known before it can spoil a whole batch.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Union

Timestamp = Union[dt.datetime, str, None]


class UnserializableEvent(ValueError):
    """The event's properties hold a value JSON cannot carry (an object, NaN, infinity, a cycle)."""


def utc_timestamp(moment: dt.datetime) -> str:
    """ISO 8601 in UTC with milliseconds and `Z`, the precision the API stores."""
    moment = moment.astimezone(dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def build_event(
    event: str,
    user_id: str | None,
    anonymous_id: str | None,
    timestamp: Timestamp,
    properties: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The event document. Wrong argument types are programming errors and raise TypeError (a naive datetime,
    ValueError); what the values say (names, ids, sizes) is left to the server, whose verdict reaches
    on_error."""
    if not isinstance(event, str):
        raise TypeError(f"event must be a str, not {type(event).__name__}")
    for name, value in (("user_id", user_id), ("anonymous_id", anonymous_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    if properties is not None and not isinstance(properties, Mapping):
        raise TypeError(f"properties must be a mapping or None, not {type(properties).__name__}")
    document: dict[str, Any] = {"event": event, "timestamp": _timestamp(timestamp)}
    if user_id is not None:
        document["user_id"] = user_id
    if anonymous_id is not None:
        document["anonymous_id"] = anonymous_id
    if properties is not None:
        document["properties"] = dict(properties)
    return document


def _timestamp(timestamp: Timestamp) -> str:
    if timestamp is None:
        return utc_timestamp(dt.datetime.now(dt.timezone.utc))
    if isinstance(timestamp, dt.datetime):
        if timestamp.tzinfo is None or timestamp.utcoffset() is None:
            # The API refuses a timestamp without an offset rather than guess one; so does the client.
            raise ValueError(
                "timestamp is a naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
            )
        return utc_timestamp(timestamp)
    if isinstance(timestamp, str):
        return timestamp  # sent as written: the server validates it (and says what is wrong)
    raise TypeError(f"timestamp must be a datetime, a str or None, not {type(timestamp).__name__}")


def encode_event(document: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON. Raises UnserializableEvent for values JSON cannot carry: one NaN in a batch
    would make the whole body invalid JSON, so it is caught here, per event."""
    try:
        return json.dumps(
            document, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
        ).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnserializableEvent(_describe(exc)) from None


def _json_default(value: object) -> str:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"a property value of type {type(value).__name__} cannot be sent as JSON")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "properties refer to themselves (a cycle) or nest too deep to send as JSON"
    text = str(exc)
    if "Out of range float" in text:
        return "a property value is NaN or infinite, which JSON cannot carry"
    if "Circular reference" in text:
        return "properties refer to themselves (a cycle), which JSON cannot carry"
    return text
