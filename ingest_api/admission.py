"""Admission: is the API key live, and does its workspace's rate limit let the request in.

Every request needs the shared state's answer (FrontDoorState.admit_many: the key, its workspace, the
rate-limit count), and the requests a worker holds at once share one call (a Coalescer). That call is a round
trip to Redis on every request's path, before the queue's, and for a busy producer it was a large part of what
a request waited for (bench/README.md). So for a workspace with a high limit, a worker counts a few of the
key's next requests in the same call (a grant) and admits them from it without a round trip, asking for the
next grant in the background once a quarter of the current one is left.

A grant is counted in the shared state when it is taken, so a limit holds across every process as before. For
the workspaces that get grants (limits of GRANT_SHARE requests a minute and more; the default 100 gets none,
its requests are counted as they come):
- a grant is at most MAX_GRANT requests and limit / GRANT_SHARE (1 % of a second's quota), and lapses after
  GRANT_SECONDS: requests of a lapsed grant were counted and never made, at most 1 % of a second's quota per
  process and per second;
- a revoked key, or a workspace's new limit or strict setting, takes effect at the key's next grant: within
  GRANT_SECONDS, within milliseconds for a key in steady use;
- RateLimit-Remaining and RateLimit-Reset are those of the moment the grant was taken.
"""

from __future__ import annotations

from collections import deque

from .coalesce import Coalescer, DeadlinePassed
from .rate_limit import RateDecision
from .state.base import FrontDoorState, StateUnavailable, Workspace

# A request admitted: its key's workspace and its rate-limit decision.
Admitted = tuple[Workspace, RateDecision]

GRANT_SECONDS = 1.0
MAX_GRANT = 64
GRANT_SHARE = 6000  # a grant is at most limit / 6000 requests: 1 % of a second's quota
REFILL_LEFT = 0.25  # ask for the next grant when this share of the current one is left


def grant_size(limit: int) -> int:
    """How many requests of a key with this per-minute limit a worker counts ahead."""
    return min(MAX_GRANT, limit // GRANT_SHARE)


class _Grant:
    __slots__ = ("workspace", "size", "decisions", "expires", "refilling")

    def __init__(self, workspace: Workspace, size: int):
        self.workspace = workspace
        self.size = size
        self.decisions: deque[RateDecision] = deque()  # the counted requests' decisions, in order
        self.expires = 0.0
        self.refilling = False


class Admission:
    def __init__(self, state: FrontDoorState, default_limit: int):
        self._state = state
        self._default_limit = default_limit
        self._grants: dict[str, _Grant] = {}  # by API key; only keys that were admitted
        self._calls: Coalescer[tuple[str, float, bool], Admitted | None] = Coalescer(
            self._admit_many, "admission"
        )

    def admit(
        self, token: str, now: float, deadline: float | None = None
    ) -> tuple[Workspace, RateDecision] | None:
        """The key's workspace and this request's rate-limit decision; None for an unknown, malformed or
        revoked key (nothing counted). StateUnavailable if the store did not answer by `deadline`
        (time.monotonic()); a request admitted from a grant does not wait for the store."""
        grant = self._grants.get(token)
        if grant is not None and now < grant.expires:
            try:
                decision = grant.decisions.popleft()
            except IndexError:  # used up: wait for the next grant, with this request counted in it
                pass
            else:
                if len(grant.decisions) <= grant.size * REFILL_LEFT and not grant.refilling:
                    grant.refilling = True
                    self._calls.post((token, now, False))
                return grant.workspace, decision
        try:
            return self._calls.submit((token, now, True), deadline)
        except DeadlinePassed as exc:
            raise StateUnavailable(str(exc)) from exc

    def _admit_many(self, items: list[tuple[str, float, bool]]) -> list[Admitted | None]:
        # One entry per key: its waiting requests first, then its next grant.
        keys: dict[str, tuple[float, list[int]]] = {}
        refills: set[str] = set()
        for index, (token, now, waits) in enumerate(items):
            latest, waiting = keys.get(token, (now, []))
            if waits:
                waiting.append(index)
            else:
                refills.add(token)
            keys[token] = (max(latest, now), waiting)
        entries: list[tuple[str, float, int]] = []
        for token, (now, waiting) in keys.items():
            grant = self._grants.get(token)
            count = len(waiting) + (grant.size if grant is not None else 0)
            if count:
                entries.append((token, now, count))
        results: list[Admitted | None] = [None] * len(items)
        try:
            answers = self._state.admit_many(entries, self._default_limit)
            for (token, now, _), answer in zip(entries, answers, strict=True):
                if answer is None:
                    self._grants.pop(token, None)  # unknown or revoked: a grant it had ends now
                    continue
                workspace, decisions = answer
                waiting = keys[token][1]
                for index, decision in zip(waiting, decisions, strict=False):  # then the grant's
                    results[index] = (workspace, decision)
                self._keep(token, workspace, decisions[len(waiting) :], now)
        finally:
            for token in refills:
                if (grant := self._grants.get(token)) is not None:
                    grant.refilling = False
        return results

    def _keep(self, token: str, workspace: Workspace, ahead: list[RateDecision], now: float) -> None:
        size = grant_size(workspace.rate_limit_per_minute or self._default_limit)
        if not size:
            self._grants.pop(token, None)
            return
        grant = self._grants.get(token)
        if grant is None or grant.workspace != workspace or now >= grant.expires:
            grant = self._grants[token] = _Grant(workspace, size)
        grant.size = size
        grant.decisions.extend(decision for decision in ahead if decision.allowed)
        grant.expires = now + GRANT_SECONDS
