"""Real responses of a running server match schemas/openapi.json: every body
validates against the schema the document gives for that path and status, and
every header the document marks as required is there."""

from __future__ import annotations

import gzip

import pytest
import requests
from jsonschema import Draft202012Validator

from .services import api_server, unique
from .test_openapi_document import DOC, deref

EVENT = {"event": "paywall_viewed", "user_id": "usr_c", "timestamp": "2024-03-15T14:22:00Z"}


def check(resp: requests.Response, path: str, method: str = "post") -> None:
    spec = deref(DOC["paths"][path][method]["responses"][str(resp.status_code)])
    schema = spec["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": DOC["components"]}).validate(resp.json())
    for name, header in spec.get("headers", {}).items():
        if deref(header).get("required"):
            assert name in resp.headers, f"{resp.status_code} {path} lacks required header {name}"


@pytest.fixture(scope="module")
def server(production_env):
    with api_server(production_env) as srv:
        yield srv


def test_responses_match_the_document(server, workspace_key):
    _, key = workspace_key()
    _, tight = workspace_key(rate_limit_per_minute=1)
    idem = unique("idem")
    cases = [
        ("/v1/events", server.post("/v1/events", EVENT, key=key), 200),
        ("/v1/events", server.post("/v1/events", EVENT, key=key, headers={"Idempotency-Key": idem}), 200),
        ("/v1/events", server.post("/v1/events", EVENT, key=key, headers={"Idempotency-Key": idem}), 200),
        (
            "/v1/events",
            server.post(
                "/v1/events", {**EVENT, "user_id": "other"}, key=key, headers={"Idempotency-Key": idem}
            ),
            422,
        ),
        ("/v1/events", server.post("/v1/events", {"event": "x"}, key=key), 400),
        ("/v1/events", server.post("/v1/events", EVENT), 401),
        (
            "/v1/events",
            server.post("/v1/events", EVENT, key=key, headers={"Content-Type": "text/plain"}),
            415,
        ),
        (
            "/v1/events",
            server.post(
                "/v1/events",
                data=gzip.compress(b" " * 9_000_000),
                key=key,
                headers={"Content-Encoding": "gzip"},
            ),
            413,
        ),
        (
            "/v1/batch/events",
            server.post("/v1/batch/events", {"events": [EVENT, {"event": "bad"}]}, key=key),
            200,
        ),
        ("/v1/batch/events", server.post("/v1/batch/events", {"events": [{"event": "bad"}]}, key=key), 400),
        ("/v1/batch/events", server.post("/v1/batch/events", {"events": []}, key=key), 400),
        ("/v1/events", server.post("/v1/events", EVENT, key=tight), 200),
        ("/v1/events", server.post("/v1/events", EVENT, key=tight), 429),
    ]
    for path, resp, status in cases:
        assert resp.status_code == status, (path, resp.text)
        check(resp, path)
    for path in ("/healthz", "/readyz"):
        resp = requests.get(server.url + path, timeout=10)
        assert resp.status_code == 200
        check(resp, path, "get")


def test_the_served_document_is_the_file(server):
    resp = requests.get(server.url + "/v1/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.json() == DOC
    assert set(DOC["paths"]) >= {"/v1/events", "/v1/batch/events"}
