"""Who is calling, and may they: API keys (their format, issuing, hashing, checking) and the check of every
request's Authorization header. The workspace comes from the API key, never from the body, and every request
counts against that workspace's rate limit.

A key is `fk_<key id>_<secret>`: the key id is public (it names the key in listings); only the SHA-256 of the
256-bit secret is stored. A fast hash is enough for random secrets of this length: there is nothing to
brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from .admission import Admission
from .errors import Unauthorized, state_unavailable
from .rate_limit import RateDecision
from .request import IngestRequest
from .state.base import StateUnavailable, Workspace

log = logging.getLogger(__name__)

KEY_PREFIX = "fk_"
KEY_ID_LENGTH = 12

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="flokit"'}


# --- API keys ----------------------------------------------------------------------------------------------


def new_key() -> tuple[str, str, str]:
    """A fresh API key as (plaintext, key_id, secret_hash)."""
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    secret = secrets.token_urlsafe(32)
    return f"{KEY_PREFIX}{key_id}_{secret}", key_id, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != KEY_ID_LENGTH or not secret:
        return None
    return key_id, secret


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def key_id_of(key_or_id: str) -> str:
    """Accept a full key, its display form (`fk_<id>_…`) or a bare id."""
    if key_or_id.startswith(KEY_PREFIX):
        return key_or_id[len(KEY_PREFIX) :].split("_", 1)[0]
    return key_or_id


def display_key(key_id: str) -> str:
    """How a key is shown once issued: its id, never its secret."""
    return f"{KEY_PREFIX}{key_id}_…"


# --- a request's Authorization -----------------------------------------------------------------------------


def admit(
    request: IngestRequest, admission: Admission, now: float, deadline: float | None = None
) -> tuple[Workspace, RateDecision]:
    """The caller's workspace and this request's rate-limit decision, or Unauthorized (state_unavailable if
    the shared state did not answer by `deadline`)."""
    header = request.header("Authorization", "") or ""
    scheme, _, token = header.strip().partition(" ")
    if not header:
        raise Unauthorized(
            "missing_api_key", "send your API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE
        )
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "invalid_api_key", "the Authorization header must be 'Bearer <key>'", headers=_CHALLENGE
        )
    try:
        admitted = admission.admit(token.strip(), now, deadline)
    except StateUnavailable as exc:
        log.warning("admission failed: %s", exc)
        raise state_unavailable() from exc
    if admitted is None:
        # Never echo the key: it may be a real key of someone else's.
        raise Unauthorized("invalid_api_key", "the API key is unknown or revoked", headers=_CHALLENGE)
    return admitted
