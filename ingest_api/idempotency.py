"""Idempotency-Key: a retry within 24 h gets the original response back and
enqueues nothing new (rules in state.base.decide_idempotency)."""
from __future__ import annotations

import hashlib
import logging
import re
from functools import partial

import orjson

from .coalesce import DeadlinePassed
from .errors import BadRequest, Conflict, JsonResponse, Unprocessable, state_unavailable
from .state.base import FrontDoorState, StateUnavailable, StoreCall, StoredResponse

log = logging.getLogger(__name__)

_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def valid_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise BadRequest("invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


def fingerprint(path: str, document: object) -> str:
    """Same endpoint and same JSON (whatever its whitespace or key order) → same fingerprint."""
    return hashlib.sha256(path.encode() + b"\0" + orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def begin(state: FrontDoorState, workspace: str, key: str, fp: str, event_ids: list[str], now: float,
          deadline: float | None = None):
    """The event ids to use, or a response to send as it is (a replay); state_unavailable if the store has not
    answered by `deadline` (time.monotonic()). A record begun after that is released again (as by `fail`)."""
    call = StoreCall(partial(state.idempotency_begin, workspace, key, fp, event_ids, now),
                     undo=lambda outcome: _release(state, workspace, key, outcome))
    try:
        outcome = state.calls.submit(call, deadline)
    except (StateUnavailable, DeadlinePassed) as exc:
        log.warning("idempotency record not read: %s", exc)
        raise state_unavailable() from exc
    if outcome.kind == "proceed":
        return outcome.event_ids
    if outcome.kind == "replay":
        stored = outcome.response
        return JsonResponse(stored.body, stored.status, {"Idempotent-Replayed": "true"})
    if outcome.kind == "in_progress":
        raise Conflict("idempotency_request_in_progress",
                       "a request with this Idempotency-Key is being processed; retry shortly",
                       headers={"Retry-After": "1"})
    raise Unprocessable("idempotency_key_mismatch",
                        "this Idempotency-Key was already used with a different request body within 24 hours;"
                        " use a new key for a new request")


def _release(state: FrontDoorState, workspace: str, key: str, outcome) -> None:
    if outcome.kind == "proceed":
        _logged("released", state.idempotency_fail, workspace, key)


def finish(state: FrontDoorState, workspace: str, key: str, response: JsonResponse,
           deadline: float | None = None) -> None:
    """Store the final answer, waiting for it until `deadline` at most. The answer goes out either way (the
    events, if any, are queued): one not stored by then is stored when the store answers; one that cannot be
    stored at all leaves the record pending, so a retry within IDEMPOTENCY_STALE_SECONDS gets 409, and one after
    it reuses the same event ids, which the consumers dedupe."""
    stored = StoredResponse(response.status_code, response.get_data())
    slot = state.calls.post(StoreCall(partial(_logged, "finished", state.idempotency_finish, workspace, key, stored)))
    try:
        state.calls.wait(slot, deadline)
    except DeadlinePassed:
        log.warning("idempotency record not finished by the request's deadline; it is when the store answers")


def fail(state: FrontDoorState, workspace: str, key: str) -> None:
    """No final answer (queue unavailable, crash): a retry may go ahead at once, with the same event ids. Not
    waited for: the answer is an error already. If the store is down, the record stays pending and a retry waits
    IDEMPOTENCY_STALE_SECONDS instead."""
    state.calls.post(StoreCall(partial(_logged, "released", state.idempotency_fail, workspace, key)))


def _logged(done: str, update, *args) -> None:
    try:
        update(*args)
    except StateUnavailable as exc:
        log.warning("idempotency record not %s: %s", done, exc)
