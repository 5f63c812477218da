"""Front-door state in Redis (production): shared by every process on every host."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import orjson
import redis
from redis.typing import EncodableT, FieldT

from ..auth import hash_secret, new_key, secret_matches, split_key
from ..idempotency import (
    IDEMPOTENCY_WINDOW_SECONDS,
    IdempotencyRecord,
    decide_idempotency,
    failed_record,
    finished_record,
)
from ..rate_limit import RATE_WINDOW_SECONDS, RateDecision, gcra_run
from .base import ApiKeyInfo, FrontDoorState, IdempotencyOutcome, StateUnavailable, StoredResponse, Workspace

# GCRA's store step for `count` requests one after another, atomically (part of _ADMIT_MANY); returns the
# previous tat so that Python (rate_limit.gcra_run) computes the decisions with the same arithmetic as
# SQLite's.
_GCRA_STEP = """
local function gcra(rate_key, now, limit, window, count)
  local prev = redis.call('GET', rate_key)
  local tat = tonumber(prev) or now
  local stored = nil
  for _ = 1, count do
    if tat < now then tat = now end
    local new_tat = tat + window / limit
    if now < new_tat - window then break end
    tat = new_tat
    stored = new_tat
  end
  if stored then
    redis.call('SET', rate_key, string.format('%.6f', stored), 'PX', math.ceil((stored - now) * 1000) + 1000)
  end
  return prev
end
"""
# base.FrontDoorState.admit_many in one round trip: for each entry in order, its
# key record, its workspace's settings and the GCRA step for its count of
# requests. KEYS are the key records; ARGV is the namespace, the default limit,
# the window, then a (secret's SHA-256, now, count) triple per key. Each result
# is 0 for an unknown or revoked key or a wrong secret (compared as digests, so
# the comparison's timing tells nothing about the secret), else {workspace, its
# own limit or '', strict, previous tat or ''}.
# It derives the workspace's keys from the key record, so it needs a standalone
# Redis (or a primary with replicas), not Redis Cluster.
_ADMIT_MANY = (
    _GCRA_STEP
    + """
local ns, default_limit, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i, key_record in ipairs(KEYS) do
  local secret_hash, now, count = ARGV[1 + 3 * i], tonumber(ARGV[2 + 3 * i]), tonumber(ARGV[3 + 3 * i])
  local key = redis.call('HMGET', key_record, 'workspace', 'hash', 'revoked')
  if not key[2] or key[2] ~= secret_hash or key[3] == '1' then
    out[i] = 0
  else
    local workspace = key[1]
    local conf = redis.call('HMGET', ns .. ':workspace:' .. workspace, 'rate_limit', 'strict_events')
    local limit = tonumber(conf[1]) or default_limit
    local prev = gcra(ns .. ':rate:' .. workspace, now, limit, window, count)
    out[i] = {workspace, conf[1] or '', conf[2] or '0', prev or ''}
  end
end
return out
"""
)


ADMISSION_RECHECK_SECONDS = 1.0
T = TypeVar("T")


def _text(value: bytes | str) -> str:
    """A value read from Redis (bytes: the client does not decode responses) as text."""
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def _reachable() -> Iterator[None]:
    """Redis unreachable or too slow (socket_timeout) is StateUnavailable; any other error is a bug."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateUnavailable(f"Redis: {exc}") from exc


class RedisState(FrontDoorState):
    def __init__(self, url: str, namespace: str = "flokit") -> None:
        super().__init__()
        self._redis = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        self._ns = namespace
        self._admit_many = self._redis.register_script(_ADMIT_MANY)
        self._admission: redis.Redis | None = None  # admit_many's own connection, made on first use
        self._admission_used = 0.0

    def _k(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    # keys and workspaces
    def create_key(self, workspace: str) -> str:
        plaintext, key_id, secret_hash = new_key()
        with _reachable():
            pipe = self._redis.pipeline()
            pipe.hsetnx(self._k("workspace", workspace), "name", workspace)
            pipe.sadd(self._k("workspaces"), workspace)
            pipe.hset(
                self._k("key", key_id),
                mapping={
                    "workspace": workspace,
                    "hash": secret_hash,
                    "created_at": repr(time.time()),
                    "revoked": "0",
                },
            )
            pipe.sadd(self._k("keys"), key_id)
            pipe.execute()
        return plaintext

    def list_keys(self) -> list[ApiKeyInfo]:
        infos = []
        with _reachable():
            for key_id in sorted(_text(k) for k in self._redis.smembers(self._k("keys"))):
                rec = self._redis.hgetall(self._k("key", key_id))
                if rec:
                    infos.append(
                        ApiKeyInfo(
                            key_id,
                            _text(rec[b"workspace"]),
                            float(rec[b"created_at"]),
                            rec[b"revoked"] == b"1",
                        )
                    )
        return sorted(infos, key=lambda i: i.created_at)

    def revoke_key(self, key_id: str) -> bool:
        with _reachable():
            if not self._redis.exists(self._k("key", key_id)):
                return False
            self._redis.hset(self._k("key", key_id), "revoked", "1")
        return True

    def authenticate(self, token: str) -> Workspace | None:
        parts = split_key(token)
        if parts is None:
            return None
        key_id, secret = parts
        with _reachable():
            workspace, secret_hash, revoked = self._redis.hmget(
                self._k("key", key_id), "workspace", "hash", "revoked"
            )
            if secret_hash is None or not secret_matches(secret, _text(secret_hash)) or revoked == b"1":
                return None
            if workspace is None:  # a key record always names its workspace
                return None
            return self._workspace(_text(workspace))

    def _workspace(self, name: str) -> Workspace:
        limit, strict = self._redis.hmget(self._k("workspace", name), "rate_limit", "strict_events")
        return Workspace(name, int(limit) if limit else None, strict == b"1")

    def configure_workspace(
        self, name: str, *, rate_limit_per_minute: int | None = None, strict_events: bool | None = None
    ) -> Workspace:
        fields: dict[FieldT, EncodableT] = {"name": name}
        if rate_limit_per_minute is not None:
            fields["rate_limit"] = str(rate_limit_per_minute)
        if strict_events is not None:
            fields["strict_events"] = "1" if strict_events else "0"
        with _reachable():
            self._redis.hset(self._k("workspace", name), mapping=fields)
            self._redis.sadd(self._k("workspaces"), name)
            return self._workspace(name)

    def list_workspaces(self) -> list[Workspace]:
        with _reachable():
            names = sorted(_text(n) for n in self._redis.smembers(self._k("workspaces")))
            return [self._workspace(name) for name in names]

    # admission
    def admit_many(
        self, requests: Sequence[tuple[str, float, int]], default_limit: int
    ) -> list[tuple[Workspace, list[RateDecision]] | None]:
        keys: list[str] = []
        args: list[str | int | float] = [self._ns, default_limit, RATE_WINDOW_SECONDS]
        asked: list[bool] = []
        for token, now, count in requests:
            parts = split_key(token)
            asked.append(parts is not None)
            if parts is not None:
                keys.append(self._k("key", parts[0]))
                args += [hash_secret(parts[1]), repr(now), count]
        with _reachable():
            found = iter(
                self._admit_many(keys=keys, args=args, client=self._admission_client()) if keys else ()
            )
        admitted: list[tuple[Workspace, list[RateDecision]] | None] = []
        for (_, now, count), was_asked in zip(requests, asked, strict=True):
            result: list[bytes] | int = next(found) if was_asked else 0
            if isinstance(result, int):  # 0: an unknown or revoked key, or a wrong secret
                admitted.append(None)
                continue
            name, own_limit, strict, prev = result
            workspace = Workspace(_text(name), int(own_limit) if own_limit else None, strict == b"1")
            decisions, _ = gcra_run(
                float(prev) if prev else None, now, workspace.rate_limit_per_minute or default_limit, count
            )
            admitted.append((workspace, decisions))
        return admitted

    def _admission_client(self) -> redis.Redis:
        # Every request's admission goes through here (once per flush of the front door's admission
        # coalescer), so it keeps a connection of its own instead of taking one from the pool per call: the
        # pool's checkout polls the socket for a closed connection or stray data first, a measurable share of
        # a worker's CPU (bench/README.md). That check is made here only after an idle second, which is when
        # Redis may have closed the connection (a restart, its idle timeout) with nobody noticing; a command
        # is never retried, since Redis may have run it. Made on first use, so the front door starts while
        # Redis is down.
        now = time.monotonic()
        if self._admission is None:
            self._admission = self._redis.client()  # type: ignore[no-untyped-call]
        elif now - self._admission_used > ADMISSION_RECHECK_SECONDS:
            connection = self._admission.connection
            if connection is not None:  # None: not connected yet
                try:
                    stale = connection.can_read()
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    stale = True
                if stale:
                    connection.disconnect()  # type: ignore[no-untyped-call]  # the next command connects again
        self._admission_used = now
        return self._admission

    # idempotency: each a read-modify-write under WATCH/MULTI (the rules stay in ingest_api.idempotency)
    def idempotency_begin(
        self, workspace: str, key: str, fingerprint: str, event_ids: list[str], now: float
    ) -> IdempotencyOutcome:
        return self._read_modify_write(
            workspace, key, lambda record: decide_idempotency(record, fingerprint, event_ids, now)
        )

    def idempotency_finish(self, workspace: str, key: str, response: StoredResponse) -> None:
        self._read_modify_write(
            workspace,
            key,
            lambda record: (None, None if record is None else finished_record(record, response)),
        )

    def idempotency_fail(self, workspace: str, key: str) -> None:
        self._read_modify_write(
            workspace, key, lambda record: (None, None if record is None else failed_record(record))
        )

    def _read_modify_write(
        self,
        workspace: str,
        key: str,
        change: Callable[[IdempotencyRecord | None], tuple[T, IdempotencyRecord | None]],
    ) -> T:
        """`change(stored record)` gives a result and the record to store (None: none). The record is watched
        from its read to the write: if anyone wrote it meanwhile (another process's begin), the write is not
        made and `change` runs again on what is stored now, as SQLite's transaction would have it."""
        name = self._k("idem", workspace, key)
        with _reachable(), self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(name)  # type: ignore[no-untyped-call]
                    raw = pipe.get(name)
                    result, record = change(orjson.loads(raw) if raw else None)
                    if record is None:
                        pipe.unwatch()
                        return result
                    pipe.multi()
                    # Redis expiry only collects garbage; the window itself is judged from created_at
                    # (idempotency.decide_idempotency), so an injected clock governs it.
                    pipe.set(name, orjson.dumps(record), ex=IDEMPOTENCY_WINDOW_SECONDS + 3600)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._redis.close()
