"""Per-workspace request rate limit, enforced across every front-door process
(the count itself is taken with the key lookup: FrontDoorState.admit)."""
from __future__ import annotations

from .errors import RateLimited
from .state.base import RateDecision


def headers_for(decision: RateDecision) -> dict[str, str]:
    # The widely deployed trio from the IETF RateLimit-header drafts.
    return {"RateLimit-Limit": str(decision.limit), "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(decision.reset_seconds)}


def enforce(decision: RateDecision) -> dict[str, str]:
    """The headers to send on the response, or RateLimited."""
    headers = headers_for(decision)
    if not decision.allowed:
        raise RateLimited("rate_limited",
                          f"more than {decision.limit} requests per minute for this workspace; "
                          f"retry in {decision.retry_after} s",
                          headers={**headers, "Retry-After": str(decision.retry_after)})
    return headers
