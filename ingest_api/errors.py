"""Every error the API returns, as one hierarchy mapped to HTTP statuses in one
place. The body is always {"error": <stable code>, "message": <what to fix>}
(ingest_api/response.py makes it a response)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from .response import JsonResponse, json_response

log = logging.getLogger(__name__)


class ApiError(Exception):
    status = 500

    def __init__(
        self,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> JsonResponse:
        return json_response(
            {"error": self.code, "message": self.message, **self.extra}, self.status, self.headers
        )


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class Unprocessable(ApiError):
    status = 422


class RateLimited(ApiError):
    status = 429


class ServiceUnavailable(ApiError):
    status = 503


# What every 503 tells the client to wait before retrying (a dependency is down: the queue or the shared
# state).
RETRY_AFTER_SECONDS = 5


def state_unavailable() -> ServiceUnavailable:
    """The answer when the shared state (state.base.StateUnavailable) cannot admit or record a request."""
    return ServiceUnavailable(
        "state_unavailable",
        "the front door's shared state (API keys, rate limits, idempotency"
        " records) did not answer; nothing was accepted, retry later",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def error_response(exc: Exception) -> JsonResponse:
    """Any exception as the API's error response: ours as they are, Werkzeug's own (404, 405, a client that
    disconnected mid-body, …) in our shape with the code from their name, anything else a logged 500."""
    if isinstance(exc, ApiError):
        return exc.response()
    if isinstance(exc, HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        # The headers the exception defines go along (a 405's Allow, which RFC 9110 requires; a 401's
        # WWW-Authenticate, …), all but its Content-Type: the body is ours.
        headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
        return json_response(
            {"error": code, "message": exc.description or exc.name}, exc.code or 500, headers
        )
    log.error("unhandled error", exc_info=exc)
    return json_response(
        {"error": "internal_error", "message": "an unexpected error occurred; it has been logged"}, 500
    )


def register(app: Flask) -> None:
    app.register_error_handler(Exception, error_response)
