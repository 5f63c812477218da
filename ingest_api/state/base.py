"""What every front-door process shares, behind one interface, and the values it speaks in.

The rules that do not depend on where the state lives are in the modules named for them (key format and
hashing: ingest_api.auth; the rate-limit arithmetic: ingest_api.rate_limit; the idempotency window and
outcomes: ingest_api.idempotency), once; the Redis and SQLite implementations only store and update records
atomically, running those rules inside their own read-modify-write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from ..coalesce import Coalescer
from ..rate_limit import RateDecision

# Calls a process makes to the store at once for requests' idempotency records (StoreCall).
STORE_CALLERS = 8


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


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


class OutcomeKind(Enum):
    """What to do with a request that carries an Idempotency-Key (IdempotencyOutcome.kind)."""

    PROCEED = "proceed"  # handle it, with the outcome's event_ids
    REPLAY = "replay"  # answer with the outcome's stored response
    IN_PROGRESS = "in_progress"  # the same request is being handled right now
    MISMATCH = "mismatch"  # the key was used for a different payload


@dataclass(frozen=True, slots=True)
class IdempotencyOutcome:
    """The store's answer to a request that carries an Idempotency-Key (ingest_api.idempotency decides it).

    PROCEED comes with `event_ids` (fresh, or those of an earlier attempt that did not finish, so consumers
    can dedupe its events); REPLAY with `response`; the other kinds with neither.
    """

    kind: OutcomeKind
    event_ids: list[str] | None = None
    response: StoredResponse | None = None


class StoreCall(NamedTuple):
    """A call to the store made for a request, run by one of the store's callers (FrontDoorState.calls), so
    that the request waits for it no longer than it may: neither Redis (a 5 s socket timeout) nor SQLite (a
    10 s busy timeout) bounds a call by what is left of a request's time. `undo(result)` runs if the call
    succeeds after its request stopped waiting (Coalescer.submit's deadline)."""

    call: Callable[[], Any]
    undo: Callable[[Any], None] | None = None


def _run_each(calls: list[StoreCall]) -> list[Any]:
    return [c.call() for c in calls]


def _undo(call: StoreCall, result: Any) -> None:
    if call.undo is not None:
        call.undo(result)


class FrontDoorState(ABC):
    """State shared by every front-door process (see the module docstring).

    Every method that reaches the store raises StateUnavailable when the store cannot be reached, does not
    answer in time or is locked, and then has decided and recorded nothing it reports; any other exception is
    a bug. Every read-modify-write (a rate-limit count, an idempotency record's begin, finish or fail) is
    atomic across processes: no concurrent update is lost or overwritten by a stale copy.
    """

    def __init__(self) -> None:
        # Who runs the StoreCalls of this process's requests: one call each, STORE_CALLERS at once.
        self.calls: Coalescer[StoreCall, Any] = Coalescer(
            _run_each, "state", flushers=STORE_CALLERS, most=1, on_abandoned=_undo
        )

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
    def configure_workspace(
        self, name: str, *, rate_limit_per_minute: int | None = None, strict_events: bool | None = None
    ) -> Workspace:
        """Create or update a workspace's settings; None leaves a setting as it is."""

    @abstractmethod
    def list_workspaces(self) -> list[Workspace]: ...

    # admission: the key check and the rate-limit count of every request
    @abstractmethod
    def admit_many(
        self, requests: Sequence[tuple[str, float, int]], default_limit: int
    ) -> list[tuple[Workspace, list[RateDecision]] | None]:
        """For each (token, now, count), in order: authenticate the key, then count `count` requests of its
        workspace at `now`, one after another, against the workspace's limit (`default_limit` if it has none),
        atomically across processes (rate_limit.gcra_run): the workspace and those requests' decisions. None
        for a key that is unknown, malformed or revoked (nothing counted). One call for many requests, so that
        a networked store admits all the requests a worker holds at once in one round trip
        (ingest_api.admission)."""

    # idempotency
    @abstractmethod
    def idempotency_begin(
        self, workspace: str, key: str, fingerprint: str, event_ids: list[str], now: float
    ) -> IdempotencyOutcome:
        """Claim `key` for a request; atomically, so concurrent duplicates cannot both proceed."""

    @abstractmethod
    def idempotency_finish(self, workspace: str, key: str, response: StoredResponse) -> None:
        """Store the final response; retries within the window get it back."""

    @abstractmethod
    def idempotency_fail(self, workspace: str, key: str) -> None:
        """The request failed without a final answer (queue unavailable): let a
        retry proceed at once, with the same event ids."""

    def ping(self) -> bool:
        """Whether the store answers (/readyz)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional: a store holding nothing open has nothing to close
        pass
