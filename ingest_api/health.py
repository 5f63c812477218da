"""Liveness, readiness and the API's own description."""

from __future__ import annotations

import time
from importlib import resources

from flask import Blueprint, Response, current_app

from .coalesce import DeadlinePassed
from .errors import RETRY_AFTER_SECONDS
from .frontdoor import FrontDoor
from .response import JsonResponse, json_response
from .state.base import FrontDoorState, StateUnavailable, StoreCall

bp = Blueprint("health", __name__)

_OPENAPI = resources.files("schemas").joinpath("openapi.json")


@bp.get("/healthz")
def healthz() -> JsonResponse:
    return json_response({"status": "ok"})


# How long /readyz waits for each of the queue and the shared state.
READY_TIMEOUT_SECONDS = 2.0


@bp.get("/readyz")
def readyz() -> JsonResponse:
    ctx: FrontDoor = current_app.extensions["flokit"]
    if not ctx.publisher.ready(timeout=READY_TIMEOUT_SECONDS):
        return json_response(
            {"error": "queue_unavailable", "message": "the event queue is not taking events"},
            503,
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if not _state_answers(ctx.state):
        return json_response(
            {"error": "state_unavailable", "message": "the shared state store is not reachable"},
            503,
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return json_response({"status": "ok"})


@bp.get("/v1/openapi.json")
def openapi() -> Response:
    return Response(_OPENAPI.read_bytes(), mimetype="application/json")


def _state_answers(state: FrontDoorState) -> bool:
    # On one of the store's callers, so that a store that does not answer (Redis frozen) costs
    # READY_TIMEOUT_SECONDS.
    try:
        answered: bool = state.calls.submit(StoreCall(state.ping), time.monotonic() + READY_TIMEOUT_SECONDS)
        return answered
    except (DeadlinePassed, StateUnavailable):
        return False
