"""POST /v1/events and POST /v1/batch/events.

Each request goes through the layers in order: who (auth) → how often (rate
limit) → what (body, validation) → once (idempotency) → queue. A 200 is
returned only after the queue acknowledged every accepted event.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, request

from schemas import envelope
from schemas.events import EventInvalid, validate_batch_shape

from . import auth, idempotency, rate_limit
from .body import parse_json, read_body
from .errors import ApiError, BadRequest
from .frontdoor import FrontDoor
from .ids import new_event_ids
from .request import IngestRequest
from .response import JsonResponse, json_response
from .state.base import Workspace

bp = Blueprint("events", __name__)


# Served through ingest_api.fast_routes, which calls ingest() without Flask's per-request machinery. The
# Flask rules stay: through them Flask's routing answers other methods on these paths (405, OPTIONS).
ROUTES = {"/v1/events": False, "/v1/batch/events": True}  # path → batch?


def _view(batch: bool) -> JsonResponse:
    return ingest(current_app.extensions["flokit"], IngestRequest(request.environ), batch)


for _path, _batch in ROUTES.items():
    bp.add_url_rule(
        _path,
        "batch_events" if _batch else "single_event",
        methods=["POST"],
        view_func=lambda batch=_batch: _view(batch),
    )


def ingest(ctx: FrontDoor, request: IngestRequest, batch: bool) -> JsonResponse:
    # Every wait of the request (the shared state's answers, the queue's) ends by then: it is answered within
    # the enqueue timeout, whatever those do. The body has arrived whole by now (deploy/http_handler.py).
    deadline = time.monotonic() + ctx.config.enqueue_timeout_seconds
    now = ctx.clock()
    workspace, decision = auth.admit(request, ctx.admission, now, deadline)
    limit_headers = rate_limit.enforce(decision)
    try:
        response = _handle(ctx, request, workspace, batch, now, deadline)
    except ApiError as exc:
        exc.headers = {**limit_headers, **exc.headers}
        raise
    response.headers.update(limit_headers)
    return response


def _handle(
    ctx: FrontDoor, request: IngestRequest, workspace: Workspace, batch: bool, now: float, deadline: float
) -> JsonResponse:
    document = parse_json(read_body(request, ctx.config.max_body_bytes))
    try:
        items = validate_batch_shape(document) if batch else [document]
    except EventInvalid as exc:
        raise BadRequest(exc.code, exc.message) from None
    event_ids = new_event_ids(len(items), now)

    key = request.header("Idempotency-Key")
    if key is None:
        return _accept(ctx, workspace, batch, items, event_ids, now, deadline)
    key = idempotency.valid_key(key)
    begun = idempotency.begin(
        ctx.state,
        workspace.name,
        key,
        idempotency.fingerprint(request.path, document),
        event_ids,
        now,
        deadline,
    )
    if begun.replay is not None:
        return begun.replay
    try:
        response = _accept(ctx, workspace, batch, items, begun.event_ids, now, deadline)
    except BadRequest as exc:
        # A final answer: a retry of the same body gets the same one.
        idempotency.finish(ctx.state, workspace.name, key, exc.response(), deadline)
        raise
    except BaseException:
        # No final answer (queue unavailable, crash): a retry may go ahead, with the same event ids.
        idempotency.fail(ctx.state, workspace.name, key)
        raise
    idempotency.finish(ctx.state, workspace.name, key, response, deadline)
    return response


def _accept(
    ctx: FrontDoor,
    workspace: Workspace,
    batch: bool,
    items: list[Any],
    event_ids: list[str],
    now: float,
    deadline: float,
) -> JsonResponse:
    validator = ctx.strict_validator if workspace.strict_events else ctx.validator
    accepted: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            accepted.append({"event_id": event_ids[index], **validator.validate(item)})
        except EventInvalid as exc:
            errors.append({"index": index, "error": exc.code, "message": exc.message})

    if not batch and errors:
        raise BadRequest(errors[0]["error"], errors[0]["message"])
    ids = [event["event_id"] for event in accepted]
    if batch and not accepted:
        raise BadRequest(
            "no_valid_events",
            f"none of the {len(items)} events is valid; see errors",
            extra={"accepted": 0, "rejected": len(errors), "event_ids": [], "errors": errors},
        )

    received_at = envelope.iso_ms(now)
    ctx.enqueuer.publish(workspace.name, received_at, accepted, deadline)
    if not batch:
        return json_response({"status": "ok", "event_id": ids[0]})
    return json_response(
        {
            "status": "ok",
            "accepted": len(accepted),
            "rejected": len(errors),
            "event_ids": ids,
            "errors": errors,
        }
    )
