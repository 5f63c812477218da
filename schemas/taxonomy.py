"""The FloKit event taxonomy (schemas/taxonomy.toml), loaded once at import.

    EVENTS["paywall_viewed"].properties["plan_ids"].type  == "string[]"
    PROPERTY_TYPES["price"]                                == "number"

Everything exported is immutable: frozen dataclasses and read-only mappings.
The taxonomy is *recommended* properties per event; the ingest API uses
PROPERTY_TYPES to type-check a known property by name on any event (a
property name has one type across the whole taxonomy, which load() enforces).
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

__all__ = [
    "TYPES",
    "EVENTS",
    "PROPERTY_TYPES",
    "EventSpec",
    "PropertySpec",
    "TaxonomyError",
    "NUMERIC_RANGES",
    "matches_type",
    "load",
]

#: The property types the taxonomy may use.
TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "string[]")

#: Exact Python types (as decoded from JSON) each scalar type accepts. Exact,
#: not isinstance: bool is a subclass of int but is not an integer/number here.
SCALAR_PYTHON_TYPES: Mapping[str, frozenset[type]] = MappingProxyType(
    {
        "string": frozenset({str}),
        "integer": frozenset({int}),
        "number": frozenset({int, float}),
        "boolean": frozenset({bool}),
    }
)

#: The values the numeric types hold, inclusive: their warehouse columns' (Int64 and Float64, see
#: schemas/migrations/0001_events.sql). A value outside is refused
#: rather than stored as NULL; NaN is outside too.
NUMERIC_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "integer": (-(2**63), 2**63 - 1),
        "number": (-sys.float_info.max, sys.float_info.max),
    }
)

_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class TaxonomyError(ValueError):
    """taxonomy.toml is malformed (raised at import: fail fast, not per event)."""


@dataclass(frozen=True, slots=True)
class PropertySpec:
    name: str
    type: str
    description: str


@dataclass(frozen=True, slots=True)
class EventSpec:
    name: str
    description: str
    properties: Mapping[str, PropertySpec]


def matches_type(type_name: str, value: Any) -> bool:
    """Whether a (non-null) JSON value has the taxonomy type `type_name` (numbers: and is in its range)."""
    if type_name == "string[]":
        return type(value) is list and all(type(item) is str for item in value)
    if type(value) not in SCALAR_PYTHON_TYPES[type_name]:
        return False
    bounds = NUMERIC_RANGES.get(type_name)
    return bounds is None or bounds[0] <= value <= bounds[1]


def load(text: str) -> tuple[Mapping[str, EventSpec], Mapping[str, str]]:
    """Parse and check taxonomy TOML text; returns (EVENTS, PROPERTY_TYPES)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TaxonomyError(f"taxonomy.toml is not valid TOML: {exc}") from None
    raw_events = doc.get("events")
    if not isinstance(raw_events, dict) or not raw_events:
        raise TaxonomyError("taxonomy.toml has no [events.*] tables")

    events: dict[str, EventSpec] = {}
    property_types: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    for event_name, raw in raw_events.items():
        where = f"events.{event_name}"
        if not _NAME.fullmatch(event_name):
            raise TaxonomyError(f"{where}: event name is not snake_case ^[a-z][a-z0-9_]{{0,63}}$")
        if not isinstance(raw, dict) or set(raw) - {"description", "properties"}:
            raise TaxonomyError(f"{where}: only `description` and `properties` are allowed")
        description = raw.get("description")
        if not isinstance(description, str) or not description.strip():
            raise TaxonomyError(f"{where}: needs a one-line description")
        if "\n" in description:
            raise TaxonomyError(f"{where}: description must be one line")
        raw_props = raw.get("properties", {})
        if not isinstance(raw_props, dict):
            raise TaxonomyError(f"{where}.properties must be a table")
        props: dict[str, PropertySpec] = {}
        for prop_name, spec in raw_props.items():
            pwhere = f"{where}.properties.{prop_name}"
            if not _NAME.fullmatch(prop_name):
                raise TaxonomyError(f"{pwhere}: property name is not snake_case")
            if not isinstance(spec, dict) or set(spec) != {"type", "description"}:
                raise TaxonomyError(f"{pwhere}: must be {{ type = ..., description = ... }}")
            ptype, pdesc = spec["type"], spec["description"]
            if ptype not in TYPES:
                raise TaxonomyError(f"{pwhere}: type {ptype!r} is not one of {', '.join(TYPES)}")
            if not isinstance(pdesc, str) or not pdesc.strip():
                raise TaxonomyError(f"{pwhere}: needs a description")
            known = property_types.setdefault(prop_name, ptype)
            first_seen.setdefault(prop_name, event_name)
            if known != ptype:
                raise TaxonomyError(
                    f"{pwhere}: type {ptype!r} conflicts with {known!r} on "
                    f"events.{first_seen[prop_name]} (a property name has one type everywhere)"
                )
            props[prop_name] = PropertySpec(prop_name, ptype, pdesc)
        events[event_name] = EventSpec(event_name, description, MappingProxyType(props))
    return MappingProxyType(events), MappingProxyType(property_types)


def _read_packaged() -> str:
    return resources.files(__package__).joinpath("taxonomy.toml").read_text(encoding="utf-8")


EVENTS: Mapping[str, EventSpec]
PROPERTY_TYPES: Mapping[str, str]
EVENTS, PROPERTY_TYPES = load(_read_packaged())
