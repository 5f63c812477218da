"""Idempotency-Key: a retry within 24 h gets the original response back and enqueues nothing new.

The rules (`decide_idempotency` and the records it keeps) are here, once; the stores run them inside their own
atomic read-modify-write. `begin`, `finish` and `fail` are what a request does, through the store's callers.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson

from .coalesce import DeadlinePassed
from .errors import BadRequest, Conflict, Unprocessable, state_unavailable
from .response import JsonResponse
from .state.base import (
    FrontDoorState,
    IdempotencyOutcome,
    OutcomeKind,
    StateUnavailable,
    StoreCall,
    StoredResponse,
)

log = logging.getLogger(__name__)

# What a store keeps per key: fp, state (pending, done, failed), ids, created_at, started_at; status and body
# once done. Only the functions below read or make one.
IdempotencyRecord = dict[str, Any]

# Idempotency records answer retries for this long after the first attempt.
IDEMPOTENCY_WINDOW_SECONDS = 24 * 60 * 60
# A "pending" record older than this belongs to a request that died mid-way
# (process killed); a retry may then take it over, reusing its event ids.
IDEMPOTENCY_STALE_SECONDS = 60.0

_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def valid_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise BadRequest(
            "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters"
        )
    return key


def fingerprint(path: str, document: object) -> str:
    """Same endpoint and same parsed document → same fingerprint: whitespace, key order and string escapes
    do not count; numbers do as parsed (1 is an integer, 1.0 and 1.00 the same float). README says so."""
    return hashlib.sha256(path.encode() + b"\0" + _canonical(document)).hexdigest()


def _canonical(document: object) -> bytes:
    try:
        return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # orjson reads 1024 levels of nesting but writes at most 254. The fingerprint is taken before
        # validation (a refusal is replayed too), so a deeper document needs one as well.
        return _canonical_deep(document)


def _canonical_deep(document: object) -> bytes:
    """The bytes orjson.dumps(document, option=OPT_SORT_KEYS) would write, at any depth: an explicit stack
    instead of recursion. Parsed JSON holds no bytes, so bytes on the stack are punctuation to copy out."""
    out: list[bytes] = []
    todo: list[object] = [document]  # popped from the end: pushed in reverse order
    while todo:
        item = todo.pop()
        if type(item) is bytes:
            out.append(item)
        elif isinstance(item, dict):
            entries = sorted(item.items())  # keys are unique strings: values are never compared
            todo.append(b"}")
            for index in range(len(entries) - 1, -1, -1):
                key, value = entries[index]
                todo.append(value)
                todo.append((b"," if index else b"") + orjson.dumps(key) + b":")
            out.append(b"{")
        elif isinstance(item, list):
            todo.append(b"]")
            for index in range(len(item) - 1, -1, -1):
                todo.append(item[index])
                if index:
                    todo.append(b",")
            out.append(b"[")
        else:
            out.append(orjson.dumps(item))
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Begun:
    """What a request with an Idempotency-Key does next (`begin`): answer `replay` as it is, if there is one;
    else go ahead with `event_ids` and end with `finish` or `fail`."""

    event_ids: list[str]
    replay: JsonResponse | None = None


def begin(
    state: FrontDoorState,
    workspace: str,
    key: str,
    fp: str,
    event_ids: list[str],
    now: float,
    deadline: float | None = None,
) -> Begun:
    """Claim `key` for this request: the event ids to use, or the response to replay; Conflict while the same
    request is under way, Unprocessable for a key used with another body, state_unavailable if the store has
    not answered by `deadline` (time.monotonic()). A record begun after that is released again (as by `fail`).
    """
    call = StoreCall(
        partial(state.idempotency_begin, workspace, key, fp, event_ids, now),
        undo=lambda outcome: _release(state, workspace, key, outcome),
    )
    try:
        outcome: IdempotencyOutcome = state.calls.submit(call, deadline)
    except (StateUnavailable, DeadlinePassed) as exc:
        log.warning("idempotency record not read: %s", exc)
        raise state_unavailable() from exc
    if outcome.kind is OutcomeKind.PROCEED and outcome.event_ids is not None:
        return Begun(outcome.event_ids)
    if outcome.kind is OutcomeKind.REPLAY and outcome.response is not None:
        stored = outcome.response
        return Begun([], JsonResponse(stored.body, stored.status, {"Idempotent-Replayed": "true"}))
    if outcome.kind is OutcomeKind.IN_PROGRESS:
        raise Conflict(
            "idempotency_request_in_progress",
            "a request with this Idempotency-Key is being processed; retry shortly",
            headers={"Retry-After": "1"},
        )
    if outcome.kind is OutcomeKind.MISMATCH:
        raise Unprocessable(
            "idempotency_key_mismatch",
            "this Idempotency-Key was already used with a different request body within 24 hours;"
            " use a new key for a new request",
        )
    raise AssertionError(f"an idempotency outcome without what its kind needs: {outcome!r}")


def _release(state: FrontDoorState, workspace: str, key: str, outcome: IdempotencyOutcome) -> None:
    if outcome.kind is OutcomeKind.PROCEED:
        _logged("released", state.idempotency_fail, workspace, key)


def finish(
    state: FrontDoorState, workspace: str, key: str, response: JsonResponse, deadline: float | None = None
) -> None:
    """Store the final answer, waiting for it until `deadline` at most. The answer goes out either way (the
    events, if any, are queued): one not stored by then is stored when the store answers; one that cannot be
    stored at all leaves the record pending, so a retry within IDEMPOTENCY_STALE_SECONDS gets 409, and one
    after it reuses the same event ids, which the consumers dedupe."""
    stored = StoredResponse(response.status_code, response.get_data())
    slot = state.calls.post(
        StoreCall(partial(_logged, "finished", state.idempotency_finish, workspace, key, stored))
    )
    try:
        state.calls.wait(slot, deadline)
    except DeadlinePassed:
        log.warning("idempotency record not finished by the request's deadline; it is when the store answers")


def fail(state: FrontDoorState, workspace: str, key: str) -> None:
    """No final answer (queue unavailable, crash): a retry may go ahead at once, with the same event ids. Not
    waited for: the answer is an error already. If the store is down, the record stays pending and a retry
    waits IDEMPOTENCY_STALE_SECONDS instead."""
    state.calls.post(StoreCall(partial(_logged, "released", state.idempotency_fail, workspace, key)))


def _logged(done: str, update: Callable[..., None], *args: Any) -> None:
    try:
        update(*args)
    except StateUnavailable as exc:
        log.warning("idempotency record not %s: %s", done, exc)


# --- the rules, run by the stores
# ----------------------------------------------------------------------------


def decide_idempotency(
    record: IdempotencyRecord | None, fingerprint: str, event_ids: list[str], now: float
) -> tuple[IdempotencyOutcome, IdempotencyRecord | None]:
    """The idempotency rules, given the stored record (or None).

    Returns the outcome and the record to store (None: leave it as it is). The
    stores run this inside their own atomic read-modify-write.
    """
    if record is None or now - record["created_at"] >= IDEMPOTENCY_WINDOW_SECONDS:
        fresh = {
            "fp": fingerprint,
            "state": "pending",
            "ids": event_ids,
            "created_at": now,
            "started_at": now,
        }
        return IdempotencyOutcome(OutcomeKind.PROCEED, event_ids), fresh
    if record["fp"] != fingerprint:
        return IdempotencyOutcome(OutcomeKind.MISMATCH), None
    if record["state"] == "done":
        return IdempotencyOutcome(
            OutcomeKind.REPLAY, response=StoredResponse(record["status"], record["body"].encode())
        ), None
    if record["state"] == "failed" or now - record["started_at"] >= IDEMPOTENCY_STALE_SECONDS:
        return IdempotencyOutcome(OutcomeKind.PROCEED, record["ids"]), {
            **record,
            "state": "pending",
            "started_at": now,
        }
    return IdempotencyOutcome(OutcomeKind.IN_PROGRESS), None


def finished_record(record: IdempotencyRecord, response: StoredResponse) -> IdempotencyRecord:
    return {**record, "state": "done", "status": response.status, "body": response.body.decode()}


def failed_record(record: IdempotencyRecord) -> IdempotencyRecord:
    return {**record, "state": "failed"}
