"""Every worked query in docs/analytics.md, run as written against the seeded world, with its numbers.

The queries are the ```sql blocks of the document whose first line is `-- query: <name>`; a query in the
document without expectations here (or the reverse) fails the test, so the document cannot drift.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path

import pytest

from deploy import clickhouse

from .test_warehouse_schema import fresh_db, seed_world, settings_for
from .warehouse_process import start_warehouse, stop_warehouse

DOC = Path(__file__).resolve().parent.parent / "docs" / "analytics.md"
_BLOCK = re.compile(r"^```sql\n(.*?)^```", re.S | re.M)
_MARKER = re.compile(r"^-- query: ([a-z0-9_]+)\s*$", re.M)


def doc_queries() -> dict[str, str]:
    queries = {}
    for block in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        marker = _MARKER.match(block)
        assert marker, f"a ```sql block in {DOC.name} has no `-- query: name` first line:\n{block[:200]}"
        assert marker.group(1) not in queries, f"two queries named {marker.group(1)}"
        queries[marker.group(1)] = block
    return queries


ALICE_TIMELINE = [
    # timestamp, event, user_id, anonymous_id, resolved_user_id, paywall_id, plan_id, revenue
    (datetime(2024, 3, 1, 10, 0), "paywall_viewed", None, "dev_a", "usr_alice", "pw_onboarding", None, None),
    (
        datetime(2024, 3, 1, 10, 2),
        "trial_started",
        "usr_alice",
        "dev_a",
        "usr_alice",
        "pw_onboarding",
        "plan_annual",
        None,
    ),
    (datetime(2024, 3, 2, 8, 0), "paywall_dismissed", None, "dev_a", "usr_alice", "pw_settings", None, None),
    (
        datetime(2024, 3, 8, 10, 2),
        "trial_converted",
        "usr_alice",
        None,
        "usr_alice",
        None,
        "plan_annual",
        59.99,
    ),
    (datetime(2024, 3, 10, 12, 0), "paywall_viewed", None, "dev_a2", "usr_alice", "pw_settings", None, None),
    (datetime(2024, 3, 10, 12, 5), "app_opened", "usr_alice", "dev_a2", "usr_alice", None, None, None),
]

EXPECTED = {
    # offer, viewed, trial_started, paid. offer_intro: Alice, Bob, Erin (via her shared device's anonymous
    # view), Grace and Heidi viewed and trialled; Alice, Erin and Bob (subscribed after his trial expired)
    # paid within 14 days; Grace converted 14 days 5 minutes after her view: outside the window.
    "funnel_by_offer": [("offer_intro", 5, 5, 3), ("offer_winback", 2, 0, 0), ("(none)", 1, 0, 0)],
    # plan, viewed, trial_started, paid
    "funnel_by_plan": [("plan_annual", 7, 4, 2), ("plan_monthly", 4, 1, 1)],
    # plan_id, trials, converted, conversion_rate: Heidi cancelled; Grace converted late but within 60 days.
    "trial_conversion_by_plan": [("plan_annual", 4, 3, 0.75), ("plan_monthly", 1, 1, 1.0)],
    "user_timeline": ALICE_TIMELINE,
    "user_timeline_fast": ALICE_TIMELINE,
    # day, currency, payers, net_revenue. 03-12: Erin and Bob; 03-15: Grace pays, Frank is refunded.
    # Alice's conversion (03-08) was delivered twice and counts once.
    "revenue_by_day": [
        (date(2024, 3, 3), "USD", 1, 9.99),
        (date(2024, 3, 6), "USD", 1, 4.99),
        (date(2024, 3, 8), "USD", 1, 59.99),
        (date(2024, 3, 12), "USD", 2, 69.98),
        (date(2024, 3, 15), "USD", 1, 55.0),
        (date(2024, 4, 3), "USD", 1, 9.99),
    ],
    "identity_conflicts": [("dev_shared", "usr_erin", ["usr_erin", "usr_frank"])],
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    proc, url = start_warehouse(tmp_path_factory.mktemp("warehouse"))
    database = fresh_db()
    c = clickhouse.connect(settings_for(url, database))
    seed_world(c, database)  # c's default database is the seeded one: the queries use bare names
    yield c
    c.close()
    assert stop_warehouse(proc) == 0


def test_every_documented_query_is_tested():
    assert set(doc_queries()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_documented_query(client, name):
    result = client.query(doc_queries()[name])
    rows = [tuple(list(v) if isinstance(v, tuple) else v for v in row) for row in result.result_rows]
    assert rows == EXPECTED[name]


def test_views_hold_before_any_merge(client):
    # The world was inserted with merges stopped and three events delivered twice: the raw table shows the
    # copies, and the documented numbers above were computed over them anyway.
    assert client.query("SELECT count() - uniqExact(event_id) FROM events").result_rows == [(3,)]
