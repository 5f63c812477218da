"""Per-workspace request rate limit, enforced across every front-door process."""
from __future__ import annotations

from .errors import RateLimited
from .state.base import FrontDoorState, RateDecision, Workspace


def headers_for(decision: RateDecision) -> dict[str, str]:
    # The widely deployed trio from the IETF RateLimit-header drafts.
    return {"RateLimit-Limit": str(decision.limit), "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(decision.reset_seconds)}


def check(state: FrontDoorState, workspace: Workspace, default_limit: int, now: float) -> dict[str, str]:
    """Count this request; the headers to send on the response, or RateLimited."""
    limit = workspace.rate_limit_per_minute or default_limit
    decision = state.hit_rate_limit(workspace.name, limit, now)
    headers = headers_for(decision)
    if not decision.allowed:
        raise RateLimited("rate_limited",
                          f"more than {limit} requests per minute for this workspace; retry in {decision.retry_after} s",
                          headers={**headers, "Retry-After": str(decision.retry_after)})
    return headers
