"""One contract, two stores: the Redis (production) and SQLite (embedded)
front-door state must behave the same. Each test runs against both."""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager

import pytest
import redis

from ingest_api import idempotency
from ingest_api.auth import display_key, key_id_of, split_key
from ingest_api.errors import Conflict, ServiceUnavailable
from ingest_api.idempotency import IDEMPOTENCY_STALE_SECONDS, IDEMPOTENCY_WINDOW_SECONDS
from ingest_api.response import json_response
from ingest_api.state.base import OutcomeKind, StoredResponse
from ingest_api.state.redis_state import RedisState
from ingest_api.state.sqlite_state import SqliteState

from .services import unique

T0 = 1_800_000_000.0


@pytest.fixture
def state(state_store):
    return state_store


def admit(state, key: str, default_limit: int, now: float):
    """One request's admission (what admit_many answers for an entry of one): (workspace, decision) or
    None."""
    [admitted] = state.admit_many([(key, now, 1)], default_limit)
    return None if admitted is None else (admitted[0], admitted[1][0])


def test_keys_are_issued_hashed_and_revocable(state):
    key = state.create_key("acme")
    key_id, secret = split_key(key)
    assert state.authenticate(key).name == "acme"
    [info] = state.list_keys()
    assert (info.key_id, info.workspace, info.revoked) == (key_id, "acme", False)
    shown = display_key(info.key_id)
    assert secret not in shown and shown == f"fk_{key_id}_…"
    assert state.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # wrong secret
    assert state.authenticate("fk_000000000000_" + secret) is None  # unknown id
    assert state.authenticate("not-a-key") is None
    assert state.revoke_key(key_id_of(shown)) is True
    assert state.authenticate(key) is None
    assert state.list_keys()[0].revoked is True
    assert state.revoke_key("ffffffffffff") is False


def test_workspace_settings(state):
    state.create_key("acme")
    assert state.configure_workspace("acme", rate_limit_per_minute=500).rate_limit_per_minute == 500
    ws = state.configure_workspace("acme", strict_events=True)
    assert (ws.rate_limit_per_minute, ws.strict_events) == (500, True)
    key = state.create_key("acme")
    assert state.authenticate(key).strict_events is True
    assert [w.name for w in state.list_workspaces()] == ["acme"]


def test_rate_limit_allows_the_quota_then_one_per_interval(state):
    acme, other = state.create_key("acme"), state.create_key("other")

    def hit(key, now):
        return admit(state, key, 100, now)[1]

    decisions = [hit(acme, T0) for _ in range(101)]
    assert all(d.allowed for d in decisions[:100])
    assert [d.remaining for d in decisions[:3]] == [99, 98, 97] and decisions[99].remaining == 0
    denied = decisions[100]
    assert not denied.allowed and denied.retry_after == 1 and denied.remaining == 0
    # 60/100 = 0.6 s later exactly one more request fits.
    assert hit(acme, T0 + 0.6).allowed
    assert not hit(acme, T0 + 0.6).allowed
    # A full minute later the whole quota is back; other workspaces were never affected.
    assert hit(acme, T0 + 61).remaining == 99
    assert hit(other, T0).remaining == 99


def test_admit_authenticates_then_counts_against_the_workspace_limit(state):
    key = state.create_key("acme")
    spare = state.create_key("acme")  # another key of the same workspace, never revoked
    other = state.create_key("other")
    state.configure_workspace("acme", rate_limit_per_minute=3, strict_events=True)
    admitted = [admit(state, key, 100, T0) for _ in range(4)]
    workspace, first = admitted[0]
    assert (workspace.name, workspace.rate_limit_per_minute, workspace.strict_events) == ("acme", 3, True)
    assert [d.allowed for _, d in admitted] == [True, True, True, False]
    assert [d.limit for _, d in admitted] == [3] * 4 and first.remaining == 2
    assert admitted[3][1].retry_after == 20
    # A workspace without a limit of its own gets the default; its count is its own.
    workspace, decision = admit(state, other, 100, T0)
    assert (workspace.name, workspace.rate_limit_per_minute, decision.limit, decision.remaining) == (
        "other",
        None,
        100,
        99,
    )
    # A wrong secret, an unknown key or a revoked key is refused, and counts nothing.
    key_id, secret = split_key(key)
    assert admit(state, key[:-1] + ("A" if key[-1] != "A" else "B"), 100, T0 + 60) is None
    assert admit(state, "fk_000000000000_" + secret, 100, T0 + 60) is None
    assert admit(state, "not-a-key", 100, T0 + 60) is None
    assert admit(state, key, 100, T0 + 60)[1].remaining == 2
    state.revoke_key(key_id)
    assert admit(state, key, 100, T0 + 120) is None
    assert admit(state, spare, 100, T0 + 120)[1].remaining == 2


def test_rate_limit_is_atomic_across_threads(state):
    results = []
    key = state.create_key("busy")

    def hit():
        for _ in range(25):
            results.append(admit(state, key, 60, T0)[1].allowed)

    threads = [threading.Thread(target=hit) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results.count(True) == 60 and results.count(False) == 40


def test_idempotency_lifecycle(state):
    ids = ["evt_a", "evt_b"]
    first = state.idempotency_begin("acme", "k1", "fp1", ids, T0)
    assert (first.kind, first.event_ids) == (OutcomeKind.PROCEED, ids)
    # The same request again while the first is in flight.
    assert (
        state.idempotency_begin("acme", "k1", "fp1", ["evt_x", "evt_y"], T0 + 1).kind
        is OutcomeKind.IN_PROGRESS
    )
    state.idempotency_finish("acme", "k1", StoredResponse(200, b'{"status":"ok"}'))
    replay = state.idempotency_begin("acme", "k1", "fp1", ["evt_x", "evt_y"], T0 + 3600)
    assert replay.kind is OutcomeKind.REPLAY and replay.response == StoredResponse(200, b'{"status":"ok"}')
    assert state.idempotency_begin("acme", "k1", "other", ["evt_x"], T0 + 3600).kind is OutcomeKind.MISMATCH
    # The same key in another workspace is another key.
    assert state.idempotency_begin("other", "k1", "fp9", ["evt_z"], T0).kind is OutcomeKind.PROCEED
    # After 24 h the key is free again, for any payload.
    later = state.idempotency_begin("acme", "k1", "fp2", ["evt_n"], T0 + IDEMPOTENCY_WINDOW_SECONDS)
    assert (later.kind, later.event_ids) == (OutcomeKind.PROCEED, ["evt_n"])


def test_idempotency_failed_or_abandoned_attempts_are_retried_with_the_same_ids(state):
    state.idempotency_begin("acme", "k", "fp", ["evt_1"], T0)
    state.idempotency_fail("acme", "k")
    retry = state.idempotency_begin("acme", "k", "fp", ["evt_2"], T0 + 5)
    assert (retry.kind, retry.event_ids) == (OutcomeKind.PROCEED, ["evt_1"])
    # A pending attempt whose process died is taken over once stale.
    assert state.idempotency_begin("acme", "k", "fp", ["evt_3"], T0 + 6).kind is OutcomeKind.IN_PROGRESS
    takeover = state.idempotency_begin("acme", "k", "fp", ["evt_3"], T0 + 5 + IDEMPOTENCY_STALE_SECONDS)
    assert (takeover.kind, takeover.event_ids) == (OutcomeKind.PROCEED, ["evt_1"])


def test_concurrent_duplicates_cannot_both_proceed(state):
    kinds = []
    barrier = threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        kinds.append(state.idempotency_begin("acme", "race", "fp", [f"evt_{i}"], T0).kind)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(kind.value for kind in kinds) == ["in_progress"] * 7 + ["proceed"]


def test_admit_many_is_admit_called_in_order(state):
    """One call for many requests (what a worker's concurrent requests share) answers each as a
    separate admit in the same order would: same workspaces, same counts, refusals counting nothing.
    An entry with a count of n stands for n requests of that key, one after another."""
    key = state.create_key("acme")
    other = state.create_key("other")
    state.configure_workspace("acme", rate_limit_per_minute=3)
    key_id, secret = split_key(key)
    requests = [
        (key, T0, 1),
        ("not-a-key", T0, 1),
        (other, T0, 2),
        (key, T0, 1),
        ("fk_000000000000_" + secret, T0, 1),
        (key, T0, 2),
        (key, T0 + 20, 1),
    ]
    admitted = state.admit_many(requests, 100)
    assert [a and a[0].name for a in admitted] == ["acme", None, "other", "acme", None, "acme", "acme"]
    acme = [d for a in admitted if a and a[0].name == "acme" for d in a[1]]
    # 3 a minute: three fit at T0, the fourth is refused, and 20 s later one more fits.
    assert [d.allowed for d in acme] == [True, True, True, False, True]
    assert [d.remaining for d in acme[:3]] == [2, 1, 0] and acme[3].retry_after == 20
    assert [d.remaining for d in admitted[2][1]] == [99, 98]
    assert state.admit_many([], 100) == []
    assert state.admit_many([("nope", T0, 1)], 100) == [None]


def test_counting_n_requests_at_once_is_counting_them_one_by_one(state, tmp_path):
    # An entry with a count of n is how a worker takes a grant of requests ahead (ingest_api.admission): the
    # same decisions as n entries of one in a row, on either store, and the same stored state afterwards.
    one_by_one = SqliteState(tmp_path / "reference.sqlite3")
    key, reference_key = state.create_key("acme"), one_by_one.create_key("acme")
    try:
        for now, n in [(T0, 4), (T0, 3), (T0 + 0.5, 2), (T0 + 9, 10), (T0 + 9.01, 1), (T0 + 70, 7)]:
            expected = [admit(one_by_one, reference_key, 6, now)[1] for _ in range(n)]
            assert state.admit_many([(key, now, n)], 6)[0][1] == expected
        assert [d.allowed for d in state.admit_many([(key, T0 + 70, 3)], 6)[0][1]] == [False] * 3
    finally:
        one_by_one.close()


def test_redis_admission_keeps_one_connection_and_reconnects_after_losing_it(redis_url):
    # admit_many runs once per flush of a worker's admission coalescer, on a connection of its own (no
    # checkout from the pool per call). If Redis closed it, the first call after an idle second (when that
    # happens unseen: a restart, Redis's idle timeout) finds out before sending, and connects again.
    import time

    import redis

    from ingest_api.state import redis_state as store_module

    store = RedisState(redis_url, namespace=unique("test"))
    admin = redis.Redis.from_url(redis_url)
    try:
        key = store.create_key("acme")
        assert store.admit_many([(key, T0, 1)], 100)[0][0].name == "acme"
        first = store._admission.client_id()
        assert store.admit_many([(key, T0 + 1, 1)], 100)[0][0].name == "acme"
        assert store._admission.client_id() == first  # the same connection
        assert admin.client_kill_filter(_id=first) == 1
        time.sleep(store_module.ADMISSION_RECHECK_SECONDS + 0.1)
        assert store.admit_many([(key, T0 + 2, 1)], 100)[0][0].name == "acme"
        assert store._admission.client_id() != first
    finally:
        admin.close()
        store.close()


@contextmanager
def stalled(state, seconds: float, request, tmp_path):
    """The store stops answering for `seconds`, for real: Redis paused (CLIENT PAUSE: every client of it
    waits), or SQLite's write lock held by another connection."""
    if isinstance(state, RedisState):
        admin = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        admin.client_pause(int(seconds * 1000), all=True)  # ends by itself
        try:
            yield
        finally:
            admin.close()
        return
    blocker = sqlite3.connect(tmp_path / "state.sqlite3", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, blocker.rollback)
    release.start()
    try:
        yield
    finally:
        release.join()
        blocker.close()


def until_answered(call, timeout: float = 15):
    """call() once the record is not pending any more (Conflict: in progress)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Conflict:
            assert time.monotonic() < deadline, "the idempotency record stayed pending"
            time.sleep(0.05)


def test_a_stalled_store_holds_a_request_only_until_its_deadline(state, request, tmp_path):
    # Neither Redis (a 5 s socket timeout) nor SQLite (a 10 s busy timeout) bounds a call by what is left of a
    # request's time: the request's idempotency calls wait for the store until the request's deadline at most.
    with stalled(state, 1.5, request, tmp_path):
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as raised:
            idempotency.begin(state, "acme", "late", "fp", ["evt_1"], T0, deadline=started + 0.3)
        assert raised.value.code == "state_unavailable" and time.monotonic() - started < 1.2
    # The begin went through once the store answered, after its request had given up: it was released again,
    # so the retry goes ahead at once, with the event ids of the attempt that timed out. The retry is made
    # once the stall is over and the late begin had time to land (a Redis pause ends by itself: a retry sent
    # during it would be queued beside the late begin, in either order).
    time.sleep(max(0.0, started + 1.5 + 1.0 - time.monotonic()))
    retry = until_answered(
        lambda: idempotency.begin(
            state, "acme", "late", "fp", ["evt_2"], T0 + 5, deadline=time.monotonic() + 5
        )
    )
    assert retry.event_ids == ["evt_1"] and retry.replay is None


def test_a_final_answer_the_store_cannot_take_in_time_still_goes_out_and_is_stored_later(
    state, request, tmp_path
):
    assert idempotency.begin(
        state, "acme", "k", "fp", ["evt_1"], T0, deadline=time.monotonic() + 5
    ).event_ids == ["evt_1"]
    ok = json_response({"status": "ok", "event_id": "evt_1"})
    with stalled(state, 1.5, request, tmp_path):
        started = time.monotonic()
        idempotency.finish(state, "acme", "k", ok, deadline=started + 0.3)  # no error: the events are queued
        assert time.monotonic() - started < 1.2
    replay = until_answered(
        lambda: idempotency.begin(state, "acme", "k", "fp", ["evt_2"], T0 + 5, deadline=time.monotonic() + 5)
    )
    assert replay.replay is not None and replay.replay.body == ok.body
    assert replay.replay.headers["Idempotent-Replayed"] == "true"


def test_every_redis_call_on_a_redis_nothing_listens_on_is_state_unavailable():
    """Redis down, for real: nothing listens on the port. Each call of the interface says so as
    StateUnavailable (what the front door answers with a 503 and the CLI with a message), never as redis-py's
    own exception."""
    from .services import free_port

    store = RedisState(f"redis://127.0.0.1:{free_port()}/0", namespace=unique("test"))
    key = "fk_0123456789ab_" + "s" * 43
    calls = {
        "create_key": lambda: store.create_key("acme"),
        "list_keys": store.list_keys,
        "revoke_key": lambda: store.revoke_key("0123456789ab"),
        "authenticate": lambda: store.authenticate(key),
        "configure_workspace": lambda: store.configure_workspace("acme", rate_limit_per_minute=5),
        "list_workspaces": store.list_workspaces,
        "admit_many": lambda: store.admit_many([(key, T0, 1)], 100),
        "idempotency_begin": lambda: store.idempotency_begin("acme", "k", "fp", ["evt_1"], T0),
        "idempotency_finish": lambda: store.idempotency_finish("acme", "k", StoredResponse(200, b"{}")),
        "idempotency_fail": lambda: store.idempotency_fail("acme", "k"),
    }
    raised = {}
    for name, call in calls.items():
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - which exception is the point
            raised[name] = type(exc).__name__
    assert raised == dict.fromkeys(calls, "StateUnavailable")
    assert store.ping() is False
    store.close()


@pytest.mark.parametrize("update", ["finish", "fail"])
def test_a_redis_begin_between_a_records_read_and_write_is_not_overwritten(redis_url, monkeypatch, update):
    """A finish (or fail) reads the record, changes it and writes it back. A begin of another process that
    lands in between (here: the first attempt of a new window) must not be overwritten by the stale copy, as
    SQLite's transaction guarantees. That moment cannot be hit reliably from outside, so the rule the update
    applies in between (idempotency.finished_record / failed_record) makes the other process's begin, on
    Redis for real and on a connection of its own, the first time it runs."""
    import orjson

    from ingest_api.state import redis_state as store_module

    namespace = unique("test")
    store, other = RedisState(redis_url, namespace=namespace), RedisState(redis_url, namespace=namespace)
    rule_name = "finished_record" if update == "finish" else "failed_record"
    rule = getattr(store_module, rule_name)
    runs = []

    def rule_with_a_begin_in_between(record, *args):
        if not runs:
            assert (
                other.idempotency_begin("acme", "k", "fp-b", ["evt_b"], T0 + IDEMPOTENCY_WINDOW_SECONDS).kind
                is OutcomeKind.PROCEED
            )
        runs.append(record["fp"])
        return rule(record, *args)

    try:
        store.idempotency_begin("acme", "k", "fp-a", ["evt_a"], T0)
        monkeypatch.setattr(store_module, rule_name, rule_with_a_begin_in_between)
        if update == "finish":
            store.idempotency_finish("acme", "k", StoredResponse(200, b"{}"))
        else:
            store.idempotency_fail("acme", "k")
        record = orjson.loads(redis.Redis.from_url(redis_url).get(f"{namespace}:idem:acme:k"))
        assert (record["fp"], record["ids"]) == ("fp-b", ["evt_b"])  # the begin's record, not the stale copy
        assert runs == ["fp-a", "fp-b"]  # the update ran again on what the begin stored
    finally:
        store.close()
        other.close()
