"""The front door through Redis outages, on the session's own Redis (frozen with SIGSTOP, or restarted, and
always brought back in a `finally` for the modules after this one): every request is answered within the
enqueue timeout whatever Redis does, the front door serves again by itself, and a restart keeps keys and
idempotency records (deploy/redis.sh runs Redis with an append-only file)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from contextlib import contextmanager

import requests

from ingest_api.admission import GRANT_SHARE
from ingest_api.state.base import OutcomeKind, StoredResponse
from ingest_api.state.redis_state import RedisState

from .conftest import REDIS_PORT
from .faults import frozen, service_pid
from .services import api_server, run_script, wait_until

TIMEOUT = 2  # FLOKIT_ENQUEUE_TIMEOUT_SECONDS of the front door here
BOUND = TIMEOUT + 1.5  # every answer comes within the timeout; the rest is margin for a busy machine
FREEZE = 12  # seconds: longer than Redis's own socket timeout (5 s) twice over


@contextmanager
def redis_frozen():
    with frozen(service_pid("redis.sh", REDIS_PORT)):  # connections still accepted by the kernel
        yield


def event(marker: str) -> dict:
    return {
        "event": "paywall_viewed",
        "anonymous_id": f"dev-{marker}",
        "timestamp": "2024-03-15T14:22:00Z",
        "properties": {"m": marker},
    }


def test_a_frozen_redis_holds_no_request_past_the_bound_and_the_front_door_recovers(
    production_env, workspace_key
):
    env = {**production_env, "FLOKIT_ENQUEUE_TIMEOUT_SECONDS": str(TIMEOUT)}
    _, granted = workspace_key(rate_limit_per_minute=1_000_000)  # admitted from grants (ingest_api.admission)
    _, counted = workspace_key(rate_limit_per_minute=GRANT_SHARE - 1)  # every request counted in Redis
    run = uuid.uuid4().hex[:8]
    kinds = [
        (key, batch, keyed)
        for key in (granted, counted)
        for batch in (False, True)
        for keyed in (False, True)
    ]
    answers: dict[tuple, list[tuple[float, float, int, dict, dict]]] = {kind: [] for kind in kinds}
    numbers = itertools.count()
    stop = threading.Event()

    def produce(server, kind):
        key, batch, keyed = kind
        session = requests.Session()
        while not stop.is_set():
            n = next(numbers)
            body = {"events": [event(f"{run}-{n}-{i}") for i in range(20)]} if batch else event(f"{run}-{n}")
            headers = {
                "Authorization": f"Bearer {key}",
                **({"Idempotency-Key": f"{run}-{n}"} if keyed else {}),
            }
            started = time.monotonic()
            response = session.post(
                server.url + ("/v1/batch/events" if batch else "/v1/events"),
                json=body,
                headers=headers,
                timeout=30,
            )
            answers[kind].append(
                (
                    started,
                    time.monotonic() - started,
                    response.status_code,
                    response.json(),
                    dict(response.headers),
                )
            )
            time.sleep(0.02)

    def served_since(since: float) -> bool:
        return all(any(a[0] >= since and a[2] == 200 for a in list(answers[kind])) for kind in kinds)

    with api_server(env, workers=2) as server:
        threads = [threading.Thread(target=produce, args=(server, kind), daemon=True) for kind in kinds]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: served_since(0), timeout=30, message="every kind of request served")
            with redis_frozen():
                frozen_at = time.monotonic()
                time.sleep(FREEZE)
                thawed_at = time.monotonic()
            wait_until(
                lambda: served_since(thawed_at), timeout=30, message="every kind of request served again"
            )
        finally:
            stop.set()
            for t in threads:
                t.join(30)

    for (key, batch, keyed), kind_answers in answers.items():
        for _started, elapsed, status, body, _headers in kind_answers:
            assert elapsed <= BOUND, f"answered after {elapsed:.1f} s: {status} {body} ({batch=} {keyed=})"
        during = [a for a in kind_answers if a[0] >= frozen_at and a[0] + BOUND <= thawed_at]
        assert any(a[2] == 503 for a in during), f"no 503 while Redis was frozen for {batch=} {keyed=}"
        for _started, _elapsed, status, body, headers in during:
            # A 200 only for a request admitted from a grant that needs nothing else of Redis (no key).
            if status == 200:
                assert key == granted and not keyed, (batch, keyed, body)
                continue
            assert status == 503 and body["error"] == "state_unavailable", (status, body, batch, keyed)
            assert int(headers["Retry-After"]) > 0


def test_a_redis_restart_keeps_keys_and_idempotency_records(redis_url):
    state = RedisState(redis_url, namespace=f"restart-{uuid.uuid4().hex[:8]}")
    key = state.create_key("acme")
    state.idempotency_begin("acme", "k", "fp", ["evt_1"], time.time())
    state.idempotency_finish("acme", "k", StoredResponse(200, b'{"status":"ok"}'))
    try:
        run_script("redis.sh", "stop", REDIS_PORT=REDIS_PORT)
    finally:
        run_script("redis.sh", "start", REDIS_PORT=REDIS_PORT)
    try:
        assert state.authenticate(key).name == "acme"
        replay = state.idempotency_begin("acme", "k", "fp", ["evt_2"], time.time())
        assert replay.kind is OutcomeKind.REPLAY and replay.response == StoredResponse(
            200, b'{"status":"ok"}'
        )
    finally:
        state.close()
