"""Per-workspace request rate limit: the arithmetic (GCRA), and what a request is told.

The count itself is kept by the shared state, taken with the key lookup (FrontDoorState.admit_many, through
ingest_api.admission), so a limit holds across every front-door process; the stores run `gcra_run` on the
stored theoretical arrival time inside their own atomic update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import RateLimited

RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the full quota is available again
    retry_after: int  # whole seconds until the next request is allowed (0 when allowed)


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


def gcra_run(
    tat: float | None, now: float, limit: int, count: int
) -> tuple[list[RateDecision], float | None]:
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


def headers_for(decision: RateDecision) -> dict[str, str]:
    # The widely deployed trio from the IETF RateLimit-header drafts.
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
    }


def enforce(decision: RateDecision) -> dict[str, str]:
    """The headers to send on the response, or RateLimited."""
    headers = headers_for(decision)
    if not decision.allowed:
        raise RateLimited(
            "rate_limited",
            f"more than {decision.limit} requests per minute for this workspace; "
            f"retry in {decision.retry_after} s",
            headers={**headers, "Retry-After": str(decision.retry_after)},
        )
    return headers
