"""Admission (ingest_api.admission) on both real stores: keys with low limits are counted request by request;
keys with high limits are admitted from grants counted ahead, and the limit still holds across workers."""

from __future__ import annotations

import pytest

from ingest_api.admission import GRANT_SECONDS, GRANT_SHARE, MAX_GRANT, Admission, grant_size
from ingest_api.auth import key_id_of

T0 = 1_800_000_000.0
HIGH = GRANT_SHARE * MAX_GRANT  # the lowest limit with full grants


@pytest.fixture
def store(state_store):
    return state_store


class Counted:
    """The store as it is, counting the admission calls that reach it."""

    def __init__(self, store):
        self.store = store
        self.calls = 0

    def admit_many(self, requests, default_limit):
        self.calls += 1
        return self.store.admit_many(requests, default_limit)


def count_one(store, key: str, now: float):
    """One more request of `key`'s workspace, counted directly in the store (no Admission): its decision."""
    return store.admit_many([(key, now, 1)], 100)[0][1][0]


def counted_so_far(store, key: str, limit: int, now: float) -> int:
    # One more request, counted directly: what it leaves says how many the store has counted before it.
    return limit - count_one(store, key, now).remaining - 1


def test_grant_sizes():
    assert grant_size(100) == 0 and grant_size(GRANT_SHARE - 1) == 0  # the default limit: no grants
    assert grant_size(GRANT_SHARE) == 1 and grant_size(10 * GRANT_SHARE) == 10
    assert grant_size(HIGH) == MAX_GRANT and grant_size(10**9) == MAX_GRANT


def test_a_low_limit_is_counted_request_by_request(store):
    key = store.create_key("acme")
    counted = Counted(store)
    admission = Admission(counted, default_limit=100)
    decisions = [admission.admit(key, T0)[1] for _ in range(101)]
    assert [d.allowed for d in decisions] == [True] * 100 + [False]
    assert [d.remaining for d in decisions[:3]] == [99, 98, 97] and decisions[100].retry_after >= 1
    assert counted.calls == 101
    assert admission.admit("fk_000000000000_nope", T0) is None


def test_a_high_limit_key_is_admitted_from_grants_counted_ahead(store):
    key = store.create_key("acme")
    store.configure_workspace("acme", rate_limit_per_minute=HIGH)
    counted = Counted(store)
    admission = Admission(counted, default_limit=100)
    admitted = [admission.admit(key, T0) for _ in range(2000)]
    assert all(ws.name == "acme" and decision.allowed for ws, decision in admitted)
    # Far fewer round trips than requests: one per grant (refills run in the background).
    assert counted.calls <= 2000 // (MAX_GRANT // 2)
    # Every admitted request was counted in the store, and at most two grants more.
    assert 2000 <= counted_so_far(store, store.create_key("acme"), HIGH, T0) <= 2000 + 2 * MAX_GRANT
    remaining = [decision.remaining for _, decision in admitted]
    assert remaining == sorted(remaining, reverse=True)  # in the order they were counted


def test_grants_let_no_more_than_the_limit_through_across_workers(store):
    # Two workers (two Admissions on one store) share a quota of 12,000 (grants of 2) at one instant: the
    # GCRA burst is the whole quota, so exactly 12,000 are counted, and what the workers admit is that
    # minus at most the requests still waiting in their grants.
    limit = 2 * GRANT_SHARE
    key = store.create_key("acme")
    store.configure_workspace("acme", rate_limit_per_minute=limit)
    workers = [Admission(store, default_limit=100), Admission(store, default_limit=100)]
    allowed = refused = 0
    for i in range(limit + 500):
        _, decision = workers[i % 2].admit(key, T0)
        allowed += decision.allowed
        refused += not decision.allowed
        if not decision.allowed:
            assert decision.retry_after >= 1 and decision.remaining == 0
    assert limit - 2 * 2 * grant_size(limit) <= allowed <= limit
    assert allowed + refused == limit + 500
    assert count_one(store, store.create_key("acme"), T0).allowed is False


def test_a_revoked_key_stops_at_its_next_grant(store):
    key = store.create_key("acme")
    store.configure_workspace("acme", rate_limit_per_minute=HIGH)
    admission = Admission(store, default_limit=100)
    assert admission.admit(key, T0) and admission.admit(key, T0)  # the second took a grant
    store.revoke_key(key_id_of(key))
    # A key in steady use: its next grant is asked for within the current one, and is refused.
    answers = [admission.admit(key, T0 + 0.001 * i) for i in range(3 * MAX_GRANT)]
    assert answers[0] is not None and answers[-1] is None
    assert all(a is None for a in answers[answers.index(None) :])


def test_a_grant_lapses_after_grant_seconds(store):
    key = store.create_key("acme")
    store.configure_workspace("acme", rate_limit_per_minute=HIGH)
    counted = Counted(store)
    admission = Admission(counted, default_limit=100)
    admission.admit(key, T0)
    admission.admit(key, T0)  # takes a grant
    calls = counted.calls
    assert (
        admission.admit(key, T0 + GRANT_SECONDS / 2)[1].allowed and counted.calls == calls
    )  # from the grant
    # A workspace's new limit is seen at the next grant; an idle key's grant lapses and is not used.
    store.configure_workspace("acme", rate_limit_per_minute=100)
    workspace, decision = admission.admit(key, T0 + GRANT_SECONDS + 0.01)
    assert decision.limit == 100 and counted.calls == calls + 1
    admission.admit(key, T0 + GRANT_SECONDS + 0.02)
    assert counted.calls == calls + 2  # 100 a minute: no grants any more
