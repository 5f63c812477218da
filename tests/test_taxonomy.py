"""schemas/taxonomy.toml and schemas.taxonomy: the event taxonomy as data."""

from __future__ import annotations

import configparser
import dataclasses
import re
import tomllib
from collections import defaultdict
from importlib import resources
from pathlib import Path

import pytest

from schemas import taxonomy
from schemas.taxonomy import (
    EVENTS,
    PROPERTY_TYPES,
    TYPES,
    EventSpec,
    PropertySpec,
    TaxonomyError,
    matches_type,
)

ROOT = Path(__file__).resolve().parents[1]
RAW = tomllib.loads((ROOT / "schemas" / "taxonomy.toml").read_text(encoding="utf-8"))
SNAKE = re.compile(r"[a-z][a-z0-9_]{0,63}")

# The paywall and subscription lifecycle the product analyses.
LIFECYCLE = [
    "paywall_viewed",
    "paywall_dismissed",
    "purchase_started",
    "purchase_completed",
    "purchase_failed",
    "purchase_cancelled",
    "purchase_restored",
    "trial_started",
    "trial_converted",
    "trial_cancelled",
    "trial_expired",
    "subscription_started",
    "subscription_renewed",
    "subscription_cancelled",
    "subscription_reactivated",
    "subscription_expired",
    "subscription_upgraded",
    "subscription_downgraded",
    "subscription_paused",
    "subscription_resumed",
    "billing_issue_detected",
    "billing_issue_resolved",
    "refund_issued",
]

# Reference examples from the API reference.
REFERENCE_PROPERTIES = {
    "paywall_viewed": {
        "paywall_id": "pw_annual_v3",
        "offer_id": "offer_intro_50pct",
        "plan_ids": ["plan_annual_usd", "plan_monthly_usd"],
        "context": "onboarding_step_3",
    },
    "trial_started": {"plan_id": "plan_annual_usd", "trial_length_days": 7},
}

COMMON_TYPES = {
    "paywall_id": "string",
    "offer_id": "string",
    "plan_id": "string",
    "plan_ids": "string[]",
    "context": "string",
    "placement": "string",
    "price": "number",
    "currency": "string",
    "trial_length_days": "integer",
    "period": "string",
    "store": "string",
    "transaction_id": "string",
    "original_transaction_id": "string",
    "reason": "string",
    "revenue": "number",
    "is_trial": "boolean",
}


def test_taxonomy_loads_with_the_lifecycle_events():
    assert list(EVENTS) == LIFECYCLE
    assert "paywall_viewed" in EVENTS and "subscription_started" in EVENTS


def test_loaded_structure_matches_the_toml():
    assert set(EVENTS) == set(RAW["events"])
    for name, spec in EVENTS.items():
        raw = RAW["events"][name]
        assert isinstance(spec, EventSpec)
        assert spec.name == name
        assert spec.description == raw["description"]
        assert list(spec.properties) == list(raw.get("properties", {}))
        for pname, pspec in spec.properties.items():
            assert isinstance(pspec, PropertySpec)
            assert (pspec.name, pspec.type, pspec.description) == (
                pname,
                raw["properties"][pname]["type"],
                raw["properties"][pname]["description"],
            )


def test_every_event_has_a_one_line_description_and_properties():
    for name, raw in RAW["events"].items():
        assert SNAKE.fullmatch(name), name
        description = raw["description"]
        assert isinstance(description, str) and description.strip() and "\n" not in description, name
        assert raw.get("properties"), f"{name} recommends no properties"


def test_every_property_type_is_one_of_the_five():
    assert TYPES == ("string", "integer", "number", "boolean", "string[]")
    for name, raw in RAW["events"].items():
        for pname, spec in raw["properties"].items():
            assert SNAKE.fullmatch(pname), (name, pname)
            assert spec["type"] in TYPES, (name, pname, spec["type"])
            assert isinstance(spec["description"], str) and spec["description"].strip(), (name, pname)


def test_shared_property_names_have_one_type_everywhere():
    """Checked on the raw TOML, independently of the loader."""
    seen: dict[str, set[str]] = defaultdict(set)
    for raw in RAW["events"].values():
        for pname, spec in raw["properties"].items():
            seen[pname].add(spec["type"])
    conflicts = {p: sorted(t) for p, t in seen.items() if len(t) > 1}
    assert not conflicts
    assert dict(PROPERTY_TYPES) == {p: t.pop() for p, t in seen.items()}
    shared = [p for p in seen if sum(p in raw["properties"] for raw in RAW["events"].values()) > 1]
    assert len(shared) >= 10  # the check above is about something


def test_common_property_types():
    for name, type_name in COMMON_TYPES.items():
        assert PROPERTY_TYPES[name] == type_name, name


def test_reference_examples_properties_type_check():
    for event_name, props in REFERENCE_PROPERTIES.items():
        recommended = EVENTS[event_name].properties
        for pname, value in props.items():
            assert pname in recommended, (event_name, pname)
            assert matches_type(recommended[pname].type, value), (event_name, pname, value)


@pytest.mark.parametrize(
    "type_name, good, bad",
    [
        ("string", ["", "x"], [1, 1.5, True, None, ["x"], {}]),
        (
            "integer",
            [0, -3, 7, 2**63 - 1, -(2**63)],
            [7.0, 7.5, True, False, "7", None, [7], 2**63, 2**64 - 1],
        ),
        (
            "number",
            [0, 7, 7.5, -1e9, 2**64 - 1, 1.7976931348623157e308],
            [True, "7.5", None, [7.5], float("nan"), float("inf"), float("-inf")],
        ),
        ("boolean", [True, False], [0, 1, "true", None]),
        ("string[]", [[], ["a"], ["a", "b"]], ["a", ["a", 1], [None], [["a"]], ("a",), None]),
    ],
)
def test_matches_type(type_name, good, bad):
    for value in good:
        assert matches_type(type_name, value), value
    for value in bad:
        assert not matches_type(type_name, value), value


def test_structures_are_immutable():
    with pytest.raises(TypeError):
        EVENTS["new_event"] = EVENTS["paywall_viewed"]  # type: ignore[index]
    with pytest.raises(TypeError):
        PROPERTY_TYPES["price"] = "string"  # type: ignore[index]
    with pytest.raises(TypeError):
        EVENTS["paywall_viewed"].properties["x"] = None  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVENTS["paywall_viewed"].description = "changed"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        EVENTS["paywall_viewed"].properties["paywall_id"].type = "integer"  # type: ignore[misc]


def test_loaded_once_at_import():
    import importlib

    assert importlib.import_module("schemas.taxonomy").EVENTS is EVENTS


LOADER_ERRORS = [
    ("not toml = = 1", "not valid TOML"),
    ("version = 1\n", "no [events"),
    ('[events.BadName]\ndescription = "x"\n', "snake_case"),
    ('[events.a]\ndescription = ""\n', "description"),
    (
        '[events.a]\ndescription = "x"\n[events.a.properties]\np = { type = "float", description = "d" }\n',
        "float",
    ),
    ('[events.a]\ndescription = "x"\n[events.a.properties]\np = { type = "string" }\n', "description"),
    ('[events.a]\ndescription = "x"\nextra = 1\n', "only"),
    (
        '[events.a]\ndescription = "x"\n[events.a.properties]\n'
        'price = { type = "number", description = "d" }\n'
        '[events.b]\ndescription = "y"\n[events.b.properties]\n'
        'price = { type = "string", description = "d" }\n',
        "conflicts",
    ),
]


@pytest.mark.parametrize("text, message", LOADER_ERRORS)
def test_loader_rejects_malformed_taxonomies(text, message):
    with pytest.raises(TaxonomyError, match=re.escape(message)):
        taxonomy.load(text)


def test_loader_accepts_a_minimal_taxonomy():
    events, types = taxonomy.load(
        '[events.a]\ndescription = "x"\n[events.a.properties]\nn = { type = "integer", description = "d" }\n'
    )
    assert events["a"].properties["n"].type == "integer"
    assert dict(types) == {"n": "integer"}


def test_taxonomy_ships_as_package_data():
    assert resources.files("schemas").joinpath("taxonomy.toml").is_file()
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["schemas"].split(",")]
    assert "*.toml" in patterns
