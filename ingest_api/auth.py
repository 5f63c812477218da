"""Who is calling, and may they: the workspace comes from the API key, never
from the body, and every request counts against that workspace's rate limit."""
from __future__ import annotations

import logging

from .admission import Admission
from .errors import Unauthorized, state_unavailable
from .request import IngestRequest
from .state.base import RateDecision, StateUnavailable, Workspace

log = logging.getLogger(__name__)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="flokit"'}


def admit(request: IngestRequest, admission: Admission, now: float,
          deadline: float | None = None) -> tuple[Workspace, RateDecision]:
    """The caller's workspace and this request's rate-limit decision, or Unauthorized (state_unavailable if the
    shared state did not answer by `deadline`)."""
    header = request.header("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise Unauthorized("missing_api_key", "send your API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("invalid_api_key", "the Authorization header must be 'Bearer <key>'", headers=_CHALLENGE)
    try:
        admitted = admission.admit(token.strip(), now, deadline)
    except StateUnavailable as exc:
        log.warning("admission failed: %s", exc)
        raise state_unavailable() from exc
    if admitted is None:
        # Never echo the key: it may be a real key of someone else's.
        raise Unauthorized("invalid_api_key", "the API key is unknown or revoked", headers=_CHALLENGE)
    return admitted
