"""What every front-door process shares, behind one interface.

Rules that do not depend on where the state lives (key format and hashing, the
rate-limit arithmetic, the idempotency window) are here once; the Redis and
SQLite implementations only store and update records atomically.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

from ..coalesce import Coalescer

# Idempotency records answer retries for this long after the first attempt.
IDEMPOTENCY_WINDOW_SECONDS = 24 * 60 * 60
# A "pending" record older than this belongs to a request that died mid-way
# (process killed); a retry may then take it over, reusing its event ids.
IDEMPOTENCY_STALE_SECONDS = 60.0
RATE_WINDOW_SECONDS = 60.0
# Calls a process makes to the store at once for requests' idempotency records (StoreCall).
STORE_CALLERS = 8

KEY_PREFIX = "fk_"


class StateUnavailable(Exception):
    """The store did not answer (unreachable, timed out, locked): nothing was decided or recorded."""


@dataclass(frozen=True, slots=True)
class Workspace:
    name: str
    rate_limit_per_minute: int | None = None  # None: the server default
    strict_events: bool = False  # True: only taxonomy event names are accepted


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    key_id: str
    workspace: str
    created_at: float
    revoked: bool

    @property
    def display(self) -> str:
        return f"{KEY_PREFIX}{self.key_id}_…"


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the full quota is available again
    retry_after: int  # whole seconds until the next request is allowed (0 when allowed)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class IdempotencyOutcome:
    """What to do with a request that carries an Idempotency-Key.

    kind: "proceed" — handle it, using `event_ids` (fresh, or those of an
    earlier attempt that did not finish, so consumers can dedupe its events);
    "replay" — answer with `response`; "in_progress" — the same request is being
    handled right now; "mismatch" — the key was used for a different payload.
    """

    kind: str
    event_ids: list[str] | None = None
    response: StoredResponse | None = None


# --- API keys --------------------------------------------------------------


def new_key() -> tuple[str, str, str]:
    """A fresh API key as (plaintext, key_id, secret_hash).

    The key id is public (it names the key in listings); only the SHA-256 of the
    256-bit secret is stored. A fast hash is enough for random secrets of this
    length: there is nothing to brute-force.
    """
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}{key_id}_{secret}", key_id, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX):].partition("_")
    if not sep or len(key_id) != 12 or not secret:
        return None
    return key_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def key_id_of(key_or_id: str) -> str:
    """Accept a full key, its display form (`fk_<id>_…`) or a bare id."""
    if key_or_id.startswith(KEY_PREFIX):
        return key_or_id[len(KEY_PREFIX):].split("_", 1)[0]
    return key_or_id


# --- rate limit: GCRA ------------------------------------------------------


def gcra(tat: float | None, now: float, limit: int) -> tuple[RateDecision, float | None]:
    """One request against a `limit` per minute quota (generic cell rate algorithm).

    `tat` is the stored theoretical arrival time. Up to `limit` requests may come
    at once; after that one every 60/limit s. Unlike fixed windows there is no
    double burst at a window boundary. Returns the decision and the new tat to
    store (None when denied: nothing changes).
    """
    interval = RATE_WINDOW_SECONDS / limit
    tat = now if tat is None or tat < now else tat
    new_tat = tat + interval
    allow_at = new_tat - RATE_WINDOW_SECONDS
    if now < allow_at:
        return RateDecision(False, limit, 0, math.ceil(tat - now), max(1, math.ceil(allow_at - now))), None
    remaining = int((now - allow_at) / interval + 1e-9)
    return RateDecision(True, limit, remaining, math.ceil(new_tat - now), 0), new_tat


def gcra_run(tat: float | None, now: float, limit: int, count: int) -> tuple[list[RateDecision], float | None]:
    """`count` requests at `now`, one after another: their decisions (the allowed ones first; a refused one
    changes nothing, so every one after it is refused too) and the tat to store (None: none allowed)."""
    decisions: list[RateDecision] = []
    stored = None
    while len(decisions) < count:
        decision, new_tat = gcra(tat, now, limit)
        if new_tat is None:
            return decisions + [decision] * (count - len(decisions)), stored
        decisions.append(decision)
        tat = stored = new_tat
    return decisions, stored


# --- idempotency -----------------------------------------------------------


def decide_idempotency(record: dict | None, fingerprint: str, event_ids: list[str],
                       now: float) -> tuple[IdempotencyOutcome, dict | None]:
    """The idempotency rules, given the stored record (or None).

    Returns the outcome and the record to store (None: leave it as it is). The
    stores run this inside their own atomic read-modify-write.
    """
    if record is None or now - record["created_at"] >= IDEMPOTENCY_WINDOW_SECONDS:
        fresh = {"fp": fingerprint, "state": "pending", "ids": event_ids, "created_at": now, "started_at": now}
        return IdempotencyOutcome("proceed", event_ids), fresh
    if record["fp"] != fingerprint:
        return IdempotencyOutcome("mismatch"), None
    if record["state"] == "done":
        return IdempotencyOutcome("replay", response=StoredResponse(record["status"], record["body"].encode())), None
    if record["state"] == "failed" or now - record["started_at"] >= IDEMPOTENCY_STALE_SECONDS:
        return IdempotencyOutcome("proceed", record["ids"]), {**record, "state": "pending", "started_at": now}
    return IdempotencyOutcome("in_progress"), None


def finished_record(record: dict, response: StoredResponse) -> dict:
    return {**record, "state": "done", "status": response.status, "body": response.body.decode()}


def failed_record(record: dict) -> dict:
    return {**record, "state": "failed"}


class StoreCall(NamedTuple):
    """A call to the store made for a request, run by one of the store's callers (FrontDoorState.calls), so that
    the request waits for it no longer than it may: neither Redis (a 5 s socket timeout) nor SQLite (a 10 s
    busy timeout) bounds a call by what is left of a request's time. `undo(result)` runs if the call succeeds
    after its request stopped waiting (Coalescer.submit's deadline)."""

    call: Callable[[], Any]
    undo: Callable[[Any], None] | None = None


def _run_each(calls: list[StoreCall]) -> list:
    return [c.call() for c in calls]


def _undo(call: StoreCall, result) -> None:
    if call.undo is not None:
        call.undo(result)


class FrontDoorState(ABC):
    """State shared by every front-door process (see the module docstring)."""

    def __init__(self):
        # Who runs the StoreCalls of this process's requests: one call each, STORE_CALLERS at once.
        self.calls: Coalescer[StoreCall, Any] = Coalescer(_run_each, "state", flushers=STORE_CALLERS, most=1,
                                                          on_abandoned=_undo)

    # keys and workspaces
    @abstractmethod
    def create_key(self, workspace: str) -> str:
        """Issue a key for `workspace` (created if new); returns the plaintext, the only time it exists."""

    @abstractmethod
    def list_keys(self) -> list[ApiKeyInfo]: ...

    @abstractmethod
    def revoke_key(self, key_id: str) -> bool:
        """Revoke by key id; False if there is no such key."""

    @abstractmethod
    def authenticate(self, token: str) -> Workspace | None:
        """The workspace a live key belongs to, else None (unknown, malformed or revoked)."""

    @abstractmethod
    def configure_workspace(self, name: str, *, rate_limit_per_minute: int | None = None,
                            strict_events: bool | None = None) -> Workspace:
        """Create or update a workspace's settings; None leaves a setting as it is."""

    @abstractmethod
    def list_workspaces(self) -> list[Workspace]: ...

    # limits
    @abstractmethod
    def count_requests(self, workspace: str, limit: int, now: float, count: int) -> list[RateDecision]:
        """Count `count` requests of `workspace` at `now` against `limit` per minute, one after another,
        atomically across processes (base.gcra_run)."""

    def hit_rate_limit(self, workspace: str, limit: int, now: float) -> RateDecision:
        """Count one request of `workspace` against `limit` per minute."""
        return self.count_requests(workspace, limit, now, 1)[0]

    def admit(self, token: str, default_limit: int, now: float) -> tuple[Workspace, RateDecision] | None:
        """Every request's first step: authenticate `token`, then count the request
        against its workspace's limit (`default_limit` if the workspace has none).
        None for a key that is unknown, malformed or revoked (nothing counted)."""
        admitted = self.admit_many([(token, now, 1)], default_limit)[0]
        return None if admitted is None else (admitted[0], admitted[1][0])

    def admit_many(self, requests: Sequence[tuple[str, float, int]],
                   default_limit: int) -> list[tuple[Workspace, list[RateDecision]] | None]:
        """For each (token, now, count), in order: `admit` called `count` times, as the
        decisions of those requests. One method so that a networked store can admit
        all the requests a worker holds at once in one round trip (ingest_api.admission)."""
        admitted = []
        for token, now, count in requests:
            workspace = self.authenticate(token)
            admitted.append(None if workspace is None else (workspace, self.count_requests(
                workspace.name, workspace.rate_limit_per_minute or default_limit, now, count)))
        return admitted

    # idempotency
    @abstractmethod
    def idempotency_begin(self, workspace: str, key: str, fingerprint: str,
                          event_ids: list[str], now: float) -> IdempotencyOutcome:
        """Claim `key` for a request; atomically, so concurrent duplicates cannot both proceed."""

    @abstractmethod
    def idempotency_finish(self, workspace: str, key: str, response: StoredResponse) -> None:
        """Store the final response; retries within the window get it back."""

    @abstractmethod
    def idempotency_fail(self, workspace: str, key: str) -> None:
        """The request failed without a final answer (queue unavailable): let a
        retry proceed at once, with the same event ids."""

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
