"""Liveness, readiness and the API's own description."""
from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, current_app

from .errors import RETRY_AFTER_SECONDS, json_response

bp = Blueprint("health", __name__)

_OPENAPI = resources.files("schemas").joinpath("openapi.json")


@bp.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz():
    ctx = current_app.extensions["flokit"]
    if not ctx.publisher.ready(timeout=2.0):
        return json_response({"error": "queue_unavailable", "message": "the event queue is not reachable"}, 503,
                             {"Retry-After": str(RETRY_AFTER_SECONDS)})
    if not ctx.state.ping():
        return json_response({"error": "state_unavailable", "message": "the shared state store is not reachable"}, 503,
                             {"Retry-After": str(RETRY_AFTER_SECONDS)})
    return json_response({"status": "ok"})


@bp.get("/v1/openapi.json")
def openapi():
    return Response(_OPENAPI.read_bytes(), mimetype="application/json")
