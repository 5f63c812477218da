"""Fuzzing the two ingest endpoints of a real front door (`flokit api`, embedded queue and state) with
schemathesis, driven by the OpenAPI document the server itself serves at /v1/openapi.json.

Each endpoint gets positive cases (requests the document says are valid) and negative ones (requests it says
are not). Whatever comes, the answer must be documented (status, body schema, headers), never a 5xx, every
error in the {"error", "message"} shape, and the headers right (the checks below). Positive cases must also be
mostly accepted: that measures how precise the document is.

FLOKIT_FUZZ_EXAMPLES (cases per endpoint and mode) raises the count for a long run: see tests/README.md.
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from deploy.components import make_state
from deploy.settings import Settings

from .services import ROOT, ApiServer

EXAMPLES = int(os.environ.get("FLOKIT_FUZZ_EXAMPLES", "600"))
INGEST_PATHS = ("/v1/events", "/v1/batch/events")
# Share of positive cases that must get a 200. What the document cannot say costs the rest: its timestamp
# pattern admits years up to 2029, the server nothing past 24 h from now; JSON Schema counts 7.0 as an
# integer, the server refuses a fraction in an integer property.
MIN_POSITIVE_ACCEPTED = 0.8
# Each case is one round trip to the server, and the bodies are big: Hypothesis' speed and size checks do not
# apply.
SLOW_AND_BIG = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
    HealthCheck.filter_too_much,
]
IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")
RATE_LIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


# --------------------------------------------------------------------------
# Checks beyond schemathesis' own (each raises AssertionError, which schemathesis reports as a failure)
# --------------------------------------------------------------------------


def _one(response, name: str) -> str | None:
    values = response.headers.get(name)
    if values is None:
        return None
    assert len(values) == 1, f"{name} sent {len(values)} times: {values}"
    return values[0]


@schemathesis.check
def error_body_shape(ctx, response, case):
    """Every error is a JSON object with string `error` and `message`."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict), f"error body is not a JSON object: {response.text[:200]!r}"
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), (
        f"error body lacks a string error and message: {response.text[:200]!r}"
    )
    return None


@schemathesis.check
def content_headers(ctx, response, case):
    """A Content-Length that is the body's length; Content-Type application/json on every answer with a
    body."""
    length = _one(response, "content-length")
    assert length is not None, "no Content-Length"
    assert int(length) == len(response.content), (
        f"Content-Length {length}, body {len(response.content)} bytes"
    )
    if response.content:
        assert _one(response, "content-type") == "application/json", response.headers.get("content-type")
    return None


@schemathesis.check
def rate_limit_headers(ctx, response, case):
    """RateLimit-* on every answer of the ingest handler (POST) to an admitted key: all but a 401 and a 503
    telling that the key could not be checked."""
    status = response.status_code
    code = response.json().get("error") if status >= 400 else None
    if case.method == "POST" and status != 401 and code != "state_unavailable":
        missing = [name for name in RATE_LIMIT_HEADERS if _one(response, name) is None]
        assert not missing, f"{status} {code} without {missing}"
    return None


@schemathesis.check
def retry_after_and_allow_headers(ctx, response, case):
    """Retry-After (whole seconds) on 409, 429 and 503; Allow on 405."""
    status = response.status_code
    if status in (409, 429, 503):
        retry_after = _one(response, "retry-after")
        assert retry_after is not None and retry_after.isdigit(), f"{status}: Retry-After {retry_after!r}"
    if status == 405:
        assert _one(response, "allow"), "405 without Allow"
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    error_body_shape,
    content_headers,
    rate_limit_headers,
    retry_after_and_allow_headers,
]


# --------------------------------------------------------------------------
# The front door
# --------------------------------------------------------------------------


class FrontDoor:
    def __init__(self, url: str, key: str):
        self.url = url
        self.auth = {"Authorization": f"Bearer {key}"}
        self.session = requests.Session()
        self.schema = schemathesis.openapi.from_url(url + "/v1/openapi.json")
        self._key_suffixes = itertools.count()

    def exchange(self, case) -> requests.Response:
        """Send the case, check the answer, and when it was a POST with an Idempotency-Key, check that a retry
        gets the same answer (the first one, replayed, for a 200)."""
        request = self._prepare(case)
        response = self.session.send(request, timeout=30)
        case.validate_response(response, checks=CHECKS, headers=self.auth)
        if case.method == "POST" and "Idempotency-Key" in request.headers and response.status_code < 500:
            retry = self.session.send(request, timeout=30)
            case.validate_response(retry, checks=CHECKS, headers=self.auth)
            assert (retry.status_code, retry.content) == (response.status_code, response.content), (
                f"retry: {retry.status_code} {retry.text[:300]}\n"
                f"first: {response.status_code} {response.text[:300]}"
            )
            if response.status_code == 200:
                assert retry.headers.get("Idempotent-Replayed") == "true", dict(retry.headers)
        return response

    def _prepare(self, case) -> requests.PreparedRequest:
        """The case as a client would send it: a fresh Idempotency-Key per request (generated keys repeat, and
        a key reused with another body is a 422 that would hide what the body gets), and the body
        gzip-compressed when the case's Content-Encoding says gzip."""
        key = case.headers.get("Idempotency-Key") if case.headers else None
        if key is not None and IDEMPOTENCY_KEY.fullmatch(key):
            suffix = f"~{next(self._key_suffixes):x}"
            case.headers["Idempotency-Key"] = key[: 255 - len(suffix)] + suffix
        kwargs = case.as_transport_kwargs(base_url=self.url, headers=self.auth)
        request = self.session.prepare_request(requests.Request(**kwargs))
        encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
        if encoding in ("gzip", "x-gzip") and request.body is not None:
            body = request.body if isinstance(request.body, bytes) else request.body.encode()
            request.body = gzip.compress(body)
            request.headers["Content-Length"] = str(len(request.body))
        return request


@pytest.fixture(scope="module")
def front_door(tmp_path_factory):
    env = {
        "FLOKIT_DATA_DIR": str(tmp_path_factory.mktemp("fuzz")),
        "FLOKIT_KAFKA_BOOTSTRAP": "",
        "FLOKIT_REDIS_URL": "",
    }
    state = make_state(Settings.from_env(env))
    state.configure_workspace("fuzz", rate_limit_per_minute=100_000_000)
    key = state.create_key("fuzz")
    state.close()
    server = ApiServer(env).start()
    try:
        front_door = FrontDoor(server.url, key)
        yield front_door
        front_door.session.close()  # or the stopping workers wait for its idle connection (keep-alive)
    finally:
        log = server.stop()
        if "Traceback" in log:  # the cause of a 5xx, shown with the failure
            print(f"front door's log (last 6000 characters):\n{log[-6000:]}")


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("path", INGEST_PATHS)
def test_ingest_endpoint_fuzzed(front_door, path, mode):
    operation = front_door.schema[path]["POST"]
    statuses: Counter = Counter()
    errors: Counter = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=SLOW_AND_BIG,
        phases=[Phase.generate, Phase.shrink],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def one_case(case):
        response = front_door.exchange(case)
        statuses[response.status_code] += 1
        if response.status_code != 200:
            errors[response.json()["error"]] += 1

    one_case()
    total = sum(statuses.values())
    print(
        f"\n{path} {mode}: {total} cases, {statuses[200] / total:.1%} 200; "
        f"statuses {dict(statuses.most_common())};"
        f" errors {dict(errors.most_common())}"
    )
    if mode is GenerationMode.POSITIVE:
        assert statuses[200] >= MIN_POSITIVE_ACCEPTED * total, (statuses, errors)


# schemathesis' coverage phase: deterministic edge cases (each header at and past its limits, a missing
# Content-Type or API key, the other HTTP methods). Its tests are made when pytest collects them, so from the
# file, which is what the server serves (test_api_openapi_conformance.test_the_served_document_is_the_file).
DOCUMENT = schemathesis.openapi.from_path(ROOT / "schemas" / "openapi.json")
DOCUMENT = DOCUMENT.include(path_regex=r"^/v1/(batch/)?events$")
DOCUMENT.config.phases.update(phases=["coverage"])
DOCUMENT.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@DOCUMENT.parametrize()
@settings(deadline=None, database=None, suppress_health_check=SLOW_AND_BIG)
def test_ingest_endpoint_edge_cases(case, front_door):
    front_door.exchange(case)
