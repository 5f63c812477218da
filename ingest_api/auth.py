"""Who is calling: the workspace comes from the API key, never from the body."""
from __future__ import annotations

from flask import Request

from .errors import Unauthorized
from .state.base import FrontDoorState, Workspace

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="flokit"'}


def authenticate(request: Request, state: FrontDoorState) -> Workspace:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise Unauthorized("missing_api_key", "send your API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("invalid_api_key", "the Authorization header must be 'Bearer <key>'", headers=_CHALLENGE)
    workspace = state.authenticate(token.strip())
    if workspace is None:
        # Never echo the key: it may be a real key of someone else's.
        raise Unauthorized("invalid_api_key", "the API key is unknown or revoked", headers=_CHALLENGE)
    return workspace
