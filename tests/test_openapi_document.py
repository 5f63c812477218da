"""schemas/openapi.json: the OpenAPI 3.1 document of the FloKit events API."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from schemas.events import (
    BATCH_ERROR_CODES,
    EVENT_ERROR_CODES,
    MAX_BATCH_EVENTS,
    MAX_PROPERTY_KEY_LENGTH,
    EventInvalid,
    EventValidator,
)
from schemas.taxonomy import PROPERTY_TYPES

DOC = json.loads(resources.files("schemas").joinpath("openapi.json").read_text(encoding="utf-8"))
DOC_URI = "urn:flokit:openapi"
REGISTRY = Registry().with_resource(DOC_URI, Resource.from_contents(DOC, default_specification=DRAFT202012))
SCHEMAS = DOC["components"]["schemas"]

TOP_LEVEL_CODES = {
    "missing_api_key": 401,
    "invalid_api_key": 401,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "unsupported_content_encoding": 415,
    "invalid_json": 400,
    "invalid_utf8": 400,
    "invalid_body": 400,
    "invalid_idempotency_key": 400,
    "idempotency_request_in_progress": 409,
    "idempotency_key_mismatch": 422,
    "rate_limited": 429,
    "queue_unavailable": 503,
    "state_unavailable": 503,
    "no_valid_events": 400,
}
READINESS_CODES = {"queue_unavailable", "state_unavailable"}  # GET /readyz 503 too
# Answered by the HTTP layer (deploy/http_handler.py) or Flask's routing, before the API's handlers.
TRANSPORT_CODES = {"invalid_http": (400, 431), "request_timeout": (408,), "method_not_allowed": (405,)}
ALL_CODES = (
    set(TOP_LEVEL_CODES)
    | READINESS_CODES
    | set(EVENT_ERROR_CODES)
    | set(BATCH_ERROR_CODES)
    | set(TRANSPORT_CODES)
)

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
EVENT_ACCEPTED = {"status": "ok", "event_id": "evt_01hs4x7k9q2m8v3n5p6r7t8w9y"}
BATCH_ACCEPTED = {
    "status": "ok",
    "accepted": 1,
    "rejected": 1,
    "event_ids": ["evt_01hs4x7k9q2m8v3n5p6r7t8w9y"],
    "errors": [
        {
            "index": 1,
            "error": "missing_identity",
            "message": "user_id/anonymous_id: neither is present; send user_id or anonymous_id",
        }
    ],
}
BATCH_REJECTED = {
    "error": "no_valid_events",
    "message": "none of the 2 events is valid; see errors",
    "accepted": 0,
    "rejected": 2,
    "event_ids": [],
    "errors": [
        {"index": 0, "error": "invalid_timestamp", "message": "timestamp: ..."},
        {"index": 1, "error": "unknown_field", "message": "plan: unknown field"},
    ],
}


def validator_for(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": f"{DOC_URI}#/components/schemas/{name}"}, registry=REGISTRY
    )


def is_valid(name: str, instance: object) -> bool:
    return validator_for(name).is_valid(instance)


def deref(obj: dict) -> dict:
    while "$ref" in obj:
        node = DOC
        for part in obj["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        obj = node
    return obj


# --------------------------------------------------------------------------
# The document itself
# --------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1.")
    validate_openapi(DOC)


def test_schemas_are_valid_json_schema():
    for schema in SCHEMAS.values():
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    "path, method",
    [
        ("/v1/events", "post"),
        ("/v1/batch/events", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/openapi.json", "get"),
    ],
)
def test_every_path_exists(path, method):
    assert method in DOC["paths"][path]


def test_no_other_paths():
    assert set(DOC["paths"]) == {"/v1/events", "/v1/batch/events", "/healthz", "/readyz", "/v1/openapi.json"}


def test_named_component_schemas_exist():
    for name in (
        "Event",
        "EventAccepted",
        "BatchRequest",
        "BatchAccepted",
        "BatchRejected",
        "Error",
        "Health",
    ):
        assert name in SCHEMAS, name


def test_bearer_security():
    scheme = DOC["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path in ("/v1/events", "/v1/batch/events"):
        assert DOC["paths"][path]["post"]["security"] == [{"bearer": []}]
    for path in ("/healthz", "/readyz", "/v1/openapi.json"):
        assert DOC["paths"][path]["get"]["security"] == []


@pytest.mark.parametrize("path", ["/v1/events", "/v1/batch/events"])
def test_post_headers_and_statuses(path):
    op = DOC["paths"][path]["post"]
    params = {deref(p)["name"]: deref(p) for p in op["parameters"]}
    key = params["Idempotency-Key"]
    assert key["in"] == "header" and key["required"] is False
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)
    key_schema = jsonschema.Draft202012Validator(key["schema"])
    assert key_schema.is_valid("7f3c2a9e-1b4d-4c7a-9f0e-2d5b6a8c1e3f")
    assert key_schema.is_valid("k" * 255)
    for bad in ("", "ключ", "a\tb", "a b", "k" * 256):
        assert not key_schema.is_valid(bad), bad
    encoding = params["Content-Encoding"]
    assert (
        encoding["in"] == "header" and encoding["required"] is False and "gzip" in encoding["schema"]["enum"]
    )

    responses = {status: deref(r) for status, r in op["responses"].items()}
    assert set(responses) == {"200", "400", "401", "408", "409", "413", "415", "422", "429", "431", "503"}
    for status in ("200", "400", "409", "413", "415", "422", "429", "503"):  # every answer to an admitted key
        assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
            responses[status]["headers"]
        )
    assert all("headers" not in responses[status] for status in ("401", "408", "431"))  # before admission
    for status in ("409", "429", "503"):
        retry_after = deref(responses[status]["headers"]["Retry-After"])
        assert retry_after["schema"]["type"] == "integer" and retry_after["required"] is True
    for status in ("200", "400"):  # successes and validation failures are replayed
        assert "Idempotent-Replayed" in responses[status]["headers"]
    for status in ("401", "409", "413", "415", "422", "429", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }


def test_request_and_success_bodies():
    single = DOC["paths"]["/v1/events"]["post"]
    batch = DOC["paths"]["/v1/batch/events"]["post"]
    assert single["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Event"
    }
    assert batch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchRequest"
    }
    assert single["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventAccepted"
    }
    assert batch["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchAccepted"
    }
    batch_400 = json.dumps(batch["responses"]["400"])
    assert "#/components/schemas/BatchRejected" in batch_400


def test_health_endpoints():
    for path in ("/healthz", "/readyz"):
        ok = DOC["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": "#/components/schemas/Health"}
    not_ready = DOC["paths"]["/readyz"]["get"]["responses"]["503"]
    assert not_ready["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    assert "Retry-After" in not_ready["headers"]
    for code in READINESS_CODES:
        assert f"`{code}`" in not_ready["description"]
        assert is_valid("Error", {"error": code, "message": "not reachable"})
    assert is_valid("Health", {"status": "ok"})
    assert not is_valid("Health", {"status": "down"})


# --------------------------------------------------------------------------
# Error codes
# --------------------------------------------------------------------------


def test_every_error_code_is_in_the_error_code_enum():
    assert set(SCHEMAS["ErrorCode"]["enum"]) == ALL_CODES
    assert set(SCHEMAS["EventErrorCode"]["enum"]) == set(EVENT_ERROR_CODES)


def test_every_error_code_is_described():
    described = SCHEMAS["ErrorCode"]["description"]
    for code in ALL_CODES:
        assert f"`{code}`" in described, code
        assert f"`{code}`" in DOC["info"]["description"], code


def test_error_codes_are_listed_under_their_status():
    for path in ("/v1/events", "/v1/batch/events"):
        responses = DOC["paths"][path]["post"]["responses"]
        for code, status in TOP_LEVEL_CODES.items():
            if code == "no_valid_events" and path == "/v1/events":
                continue
            assert f"`{code}`" in deref(responses[str(status)])["description"], (path, code, status)
        for code, statuses in TRANSPORT_CODES.items():
            for status in statuses:
                if status != 405:  # another method's answer: not one of POST's responses
                    assert f"`{code}`" in deref(responses[str(status)])["description"], (path, code, status)
    single_400 = DOC["paths"]["/v1/events"]["post"]["responses"]["400"]["description"]
    for code in EVENT_ERROR_CODES:
        assert f"`{code}`" in single_400, code
    batch_400 = DOC["paths"]["/v1/batch/events"]["post"]["responses"]["400"]["description"]
    for code in BATCH_ERROR_CODES:
        assert f"`{code}`" in batch_400, code


@pytest.mark.parametrize("code", sorted(ALL_CODES))
def test_error_bodies_validate(code):
    assert is_valid("Error", {"error": code, "message": "what to fix"})


def test_error_schema_rejects_malformed_bodies():
    assert not is_valid("Error", {"error": "rate_limited"})
    assert not is_valid("Error", {"message": "x"})
    assert not is_valid("Error", {"error": "not_a_code", "message": "x"})
    assert not is_valid("Error", {"error": 429, "message": "x"})


# --------------------------------------------------------------------------
# Reference examples against the schemas
# --------------------------------------------------------------------------


def test_reference_responses_validate():
    validator_for("EventAccepted").validate(EVENT_ACCEPTED)
    validator_for("BatchAccepted").validate(BATCH_ACCEPTED)
    validator_for("BatchAccepted").validate(
        {
            "status": "ok",
            "accepted": 2,
            "rejected": 0,
            "event_ids": ["evt_01hs4x7k9q2m8v3n5p6r7t8w9y", "evt_01hs4x7k9q2m8v3n5p6r7t8w9z"],
            "errors": [],
        }
    )
    validator_for("BatchRejected").validate(BATCH_REJECTED)
    validator_for("Error").validate(BATCH_REJECTED)  # BatchRejected extends Error


@pytest.mark.parametrize(
    "name, body",
    [
        ("EventAccepted", {"status": "ok"}),
        ("EventAccepted", {"status": "ok", "event_id": "01hs4x7k9q2m8v3n5p6r7t8w9y"}),
        ("EventAccepted", {"status": "ok", "event_id": "evt_01HS4X7K9Q2M8V3N5P6R7T8W9Y"}),
        ("EventAccepted", {"status": "ok", "event_id": "evt_short"}),
        ("EventAccepted", {"status": "error", "event_id": "evt_01hs4x7k9q2m8v3n5p6r7t8w9y"}),
        ("BatchAccepted", {k: v for k, v in BATCH_ACCEPTED.items() if k != "errors"}),
        ("BatchAccepted", {**BATCH_ACCEPTED, "accepted": "1"}),
        ("BatchAccepted", {**BATCH_ACCEPTED, "errors": [{"index": 1, "error": "missing_identity"}]}),
        (
            "BatchAccepted",
            {**BATCH_ACCEPTED, "errors": [{"index": 1, "error": "rate_limited", "message": "x"}]},
        ),
        ("BatchRejected", {**BATCH_REJECTED, "error": "invalid_body"}),
        ("BatchRejected", {k: v for k, v in BATCH_REJECTED.items() if k != "errors"}),
    ],
)
def test_malformed_responses_do_not_validate(name, body):
    assert not is_valid(name, body)


def test_reference_events_validate_against_event():
    for obj in (PAYWALL_VIEWED, TRIAL_STARTED, {**TRIAL_STARTED, "anonymous_id": "dev", "properties": None}):
        validator_for("Event").validate(obj)
    validator_for("BatchRequest").validate({"events": [PAYWALL_VIEWED, TRIAL_STARTED]})


@pytest.mark.parametrize(
    "change",
    [
        {"plan": "x"},  # additionalProperties false
        {"event": None},
        {"event": "PaywallViewed"},
        {"timestamp": None},
        {"user_id": None},  # and no anonymous_id: missing identity
        {"user_id": ""},
        {"user_id": "   "},
        {"user_id": "a\x00b"},
        {"properties": []},
        {"properties": {"trial_length_days": "7"}},
        {"properties": {"plan_ids": ["a", 1]}},
        {"properties": {"k" * (MAX_PROPERTY_KEY_LENGTH + 1): 1}},
    ],
)
def test_invalid_events_do_not_validate_against_event(change):
    assert not is_valid("Event", {**TRIAL_STARTED, **change})


def test_missing_required_event_fields_do_not_validate():
    for field in ("event", "timestamp"):
        assert not is_valid("Event", {k: v for k, v in TRIAL_STARTED.items() if k != field})


def test_batch_request_limits():
    batch = SCHEMAS["BatchRequest"]["properties"]["events"]
    assert (batch["minItems"], batch["maxItems"]) == (1, MAX_BATCH_EVENTS)
    assert not is_valid("BatchRequest", {"events": []})
    assert not is_valid("BatchRequest", {"events": [{}] * (MAX_BATCH_EVENTS + 1)})
    assert not is_valid("BatchRequest", {"events": [PAYWALL_VIEWED], "extra": 1})
    # Each element is an Event (the server still takes the valid ones of
    # a batch, and says so in its description).
    assert batch["items"] == {"$ref": "#/components/schemas/Event"}
    assert not is_valid("BatchRequest", {"events": [PAYWALL_VIEWED, {"event": "no timestamp"}]})
    assert "still a 200" in SCHEMAS["BatchRequest"]["description"]


def test_event_schema_matches_the_validator():
    """The documented Event agrees with schemas.events on the reference examples and the taxonomy."""
    event = SCHEMAS["Event"]
    assert set(event["properties"]) == {"event", "user_id", "anonymous_id", "timestamp", "properties"}
    assert event["properties"]["event"]["pattern"] == "^[a-z][a-z0-9_]{0,63}$"
    documented = event["properties"]["properties"]["properties"]
    expected_json_types = {
        "string": "string",
        "integer": "integer",
        "number": "number",
        "boolean": "boolean",
        "string[]": "array",
    }
    assert set(documented) == set(PROPERTY_TYPES)
    for name, type_name in PROPERTY_TYPES.items():
        assert documented[name]["type"] == [expected_json_types[type_name], "null"], name
        if type_name == "string[]":
            assert documented[name]["items"] == {"type": "string"}
    validator = EventValidator()
    for obj in (PAYWALL_VIEWED, TRIAL_STARTED):
        assert is_valid("Event", obj) and validator.validate(copy.deepcopy(obj))


# --------------------------------------------------------------------------
# Precision: what the document admits, the server accepts (tests/test_fuzz_api.py generates requests from it)
# --------------------------------------------------------------------------


def server_accepts(**fields) -> bool:
    try:
        EventValidator().validate(
            {"event": "paywall_viewed", "user_id": "usr_1", "timestamp": "2024-03-15T14:22:00Z", **fields}
        )
        return True
    except EventInvalid:
        return False


def admitted(field: str, value: object) -> bool:
    return jsonschema.Draft202012Validator(SCHEMAS["Event"]["properties"][field]).is_valid(value)


@pytest.mark.parametrize(
    "timestamp, in_pattern",
    [
        ("2024-03-15T14:22:00Z", True),
        ("2024-03-15T16:22:05.123+02:00", True),
        ("2024-03-15t14:22:00.123456789z", True),
        ("2000-01-01T00:00:00Z", True),
        ("2024-02-29T23:59:59-11:30", True),
        ("1999-12-31T23:59:59Z", False),
        ("2030-01-01T00:00:00Z", False),
        ("2024-03-15T14:22:00", False),  # no offset
        ("2024-03-15", False),
        ("2024-03-15T14:22:60Z", False),  # leap second
        ("2024-03-15T24:00:00Z", False),
        ("2024-03-15 14:22:00Z", False),  # the server reads it too; the pattern keeps to RFC 3339
        ("20240315T142200Z", False),
    ],
)
def test_timestamp_pattern(timestamp, in_pattern):
    assert admitted("timestamp", timestamp) is in_pattern
    if in_pattern:
        assert server_accepts(timestamp=timestamp)


def test_timestamp_pattern_admits_now_and_tomorrow():
    """The pattern's years end at 2029 (so that generated timestamps stay near the accepted window): this
    fails when they must be extended."""
    now = datetime.now(UTC)
    for moment in (now, now + timedelta(hours=23)):
        for timestamp in (
            moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
            moment.astimezone(timezone(timedelta(hours=-7))).isoformat(timespec="milliseconds"),
        ):
            assert admitted("timestamp", timestamp), (
                f"{timestamp}: extend the years of Event.timestamp's pattern"
            )
            assert server_accepts(timestamp=timestamp)


@pytest.mark.parametrize(
    "value",
    [
        "u",
        "usr_42",
        " u ",
        "\u00a0u\u3000",
        "é" * 256,
        "  " + "x" * 256 + "  ",
        "a b",
        "x" * 257,
        "",
        "   ",
        "\u00a0",
        "u\x00",
        "\tu",
        "\nu",
        "u\x7f",
        "u\x85",
        "u\x9f",
        "\u2028u",
    ],
)
def test_identity_pattern_is_the_validator(value):
    """user_id / anonymous_id: 1 to 256 characters once whitespace is stripped, no control character. (Not a
    trailing newline here: Python's `$`, unlike JSON Schema's ECMA-262 one, matches before it.)"""
    for field in ("user_id", "anonymous_id"):
        assert admitted(field, value) is server_accepts(**{field: value}), (field, value)


def test_integer_properties_are_64_bit():
    documented = SCHEMAS["Event"]["properties"]["properties"]["properties"]
    for name, type_name in PROPERTY_TYPES.items():
        if type_name == "integer":
            assert (documented[name]["minimum"], documented[name]["maximum"]) == (-(2**63), 2**63 - 1), name
    assert is_valid("Event", {**TRIAL_STARTED, "properties": {"trial_length_days": 2**63 - 1}})
    assert not is_valid("Event", {**TRIAL_STARTED, "properties": {"trial_length_days": 2**63}})


def test_embedded_examples_validate_against_their_schemas():
    checked = 0
    for name, schema in SCHEMAS.items():
        for example in schema.get("examples", []):
            if name in ("EventId",):
                continue
            validator_for(name).validate(example)
            checked += 1
    for path_item in DOC["paths"].values():
        for op in path_item.values():
            media = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            bodies = [(media.get("schema"), media.get("examples", {}))]
            for response in op["responses"].values():
                m = deref(response).get("content", {}).get("application/json", {})
                bodies.append((m.get("schema"), m.get("examples", {})))
            for schema, examples in bodies:
                for example in examples.values():
                    ref = schema["$ref"]
                    jsonschema.Draft202012Validator({"$ref": DOC_URI + ref}, registry=REGISTRY).validate(
                        example["value"]
                    )
                    checked += 1
    assert checked >= 10


def test_event_id_pattern():
    pattern = re.compile(SCHEMAS["EventId"]["pattern"])
    assert pattern.fullmatch("evt_01hs4x7k9q2m8v3n5p6r7t8w9y")
    assert not pattern.fullmatch("evt_01hs4x7k9q2m8v3n5p6r7t8w9")
    assert not pattern.fullmatch("evt_01HS4X7K9Q2M8V3N5P6R7T8W9Y")
