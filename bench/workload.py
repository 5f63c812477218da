"""The benchmark's events: a realistic, reproducible mix from the taxonomy.

Every event looks like what an app or a store-notification backend sends (the API reference's examples are
the model): the taxonomy's events weighted by how often they occur (paywall views dominate, refunds are rare),
each with a subset of its recommended properties with realistic values, and identities spread over many
devices and users so that partitions fill evenly:

    ~40 % anonymous_id only (before login), ~45 % user_id only (backend / store events), ~15 % both (a link).

Timestamps fall in the hour before generation, so they are valid for the front door (not in the future, after
2000) and land in one or two monthly partitions of the events table.

Everything is seeded: the same seed gives the same bodies. Bodies are JSON on one line each (no newline
inside), which is how the wrk script and the load generator read them from a file.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson

from schemas.taxonomy import EVENTS, PROPERTY_TYPES

# Relative frequency of each taxonomy event (a paywall is seen far more often than it is bought).
EVENT_WEIGHTS: dict[str, float] = {
    "paywall_viewed": 30,
    "paywall_dismissed": 18,
    "purchase_started": 8,
    "purchase_completed": 4,
    "purchase_failed": 1.5,
    "purchase_cancelled": 3,
    "purchase_restored": 1,
    "trial_started": 4,
    "trial_converted": 2,
    "trial_cancelled": 1.5,
    "trial_expired": 1,
    "subscription_started": 3,
    "subscription_renewed": 10,
    "subscription_cancelled": 2,
    "subscription_reactivated": 0.5,
    "subscription_expired": 1.5,
    "subscription_upgraded": 0.7,
    "subscription_downgraded": 0.5,
    "subscription_paused": 0.4,
    "subscription_resumed": 0.3,
    "billing_issue_detected": 0.8,
    "billing_issue_resolved": 0.5,
    "refund_issued": 0.4,
}
assert set(EVENT_WEIGHTS) == set(EVENTS), "EVENT_WEIGHTS must cover the taxonomy"

_PLANS = [
    "plan_annual_usd",
    "plan_monthly_usd",
    "plan_weekly_usd",
    "plan_annual_eur",
    "plan_monthly_eur",
    "plan_lifetime_usd",
    "plan_annual_family_usd",
]
_VALUES: dict[str, list] = {
    "paywall_id": [
        "pw_annual_v3",
        "pw_annual_v4",
        "pw_monthly_v2",
        "pw_onboarding_v7",
        "pw_winback_v1",
        "pw_settings_v2",
    ],
    "offer_id": ["offer_intro_50pct", "offer_winback_30pct", "offer_free_trial_7d", "offer_black_friday"],
    "context": ["onboarding_step_3", "settings", "feature_gate_export", "home_banner", "push_reactivation"],
    "placement": ["settings_upgrade_button", "onboarding_end", "export_limit_reached", "session_start"],
    "experiment_id": ["exp_paywall_copy_q1", "exp_price_test_eu", "exp_trial_length"],
    "variant_id": ["control", "variant_a", "variant_b"],
    "plan_id": _PLANS,
    "previous_plan_id": _PLANS,
    "currency": ["USD", "USD", "USD", "EUR", "GBP", "JPY", "BRL"],
    "period": ["P1W", "P1M", "P1M", "P3M", "P1Y", "P1Y"],
    "store": ["app_store", "app_store", "play_store", "play_store", "stripe", "web"],
    "environment": ["production"] * 9 + ["sandbox"],
    "country": ["US", "US", "US", "GB", "DE", "FR", "JP", "BR", "IN", "CA"],
    "reason": [
        "close_button",
        "back_gesture",
        "swipe_down",
        "app_backgrounded",
        "payment_declined",
        "store_error",
        "network_error",
        "user_cancelled",
        "billing_error",
        "customer_request",
    ],
    "error_code": ["SKErrorPaymentInvalid", "BILLING_UNAVAILABLE", "card_declined", "E_NETWORK"],
    "price": [2.99, 4.99, 9.99, 29.99, 49.99, 59.99, 99.99],
}


def _value(name: str, rng: random.Random, now: float):
    pool = _VALUES.get(name)
    if pool is not None:
        return rng.choice(pool)
    kind = PROPERTY_TYPES[name]
    if name.endswith("transaction_id"):
        return f"{rng.randrange(10**14, 10**15)}"
    if name.endswith("_at"):  # datetimes inside properties: ISO 8601 with an offset
        return _iso(now + rng.randrange(86_400, 40 * 86_400))
    if name == "revenue":
        return round(rng.choice(_VALUES["price"]) * rng.choice([1, 1, 1, 0.5, 0.7]), 2)
    if name == "trial_length_days":
        return rng.choice([3, 7, 7, 14, 30])
    if name == "renewal_number":
        return rng.randrange(1, 36)
    if name == "duration_seconds":
        return round(rng.uniform(0.8, 120.0), 1)
    if name == "plan_ids":
        return rng.sample(_PLANS, rng.choice([2, 2, 3]))
    if name == "is_trial":
        return rng.random() < 0.3
    return {"string": "x", "integer": 1, "number": 1.0, "boolean": False, "string[]": []}[kind]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventSource:
    """An endless, seeded stream of raw event objects (what a client POSTs)."""

    def __init__(self, seed: int = 1, devices: int = 200_000, users: int = 100_000, now: float | None = None):
        self._rng = random.Random(seed)
        self._devices = devices
        self._users = users
        self._now = time.time() if now is None else now
        self._names = list(EVENT_WEIGHTS)
        self._weights = list(EVENT_WEIGHTS.values())

    def event(self) -> dict:
        rng = self._rng
        name = rng.choices(self._names, self._weights)[0]
        spec = EVENTS[name]
        obj: dict = {"event": name}
        roll = rng.random()
        store_side = name.startswith(
            ("subscription_", "billing_", "refund_", "trial_expired", "trial_converted")
        )
        if store_side or 0.40 <= roll < 0.85:
            obj["user_id"] = f"usr_{rng.randrange(self._users):06d}"
        elif roll < 0.40:
            obj["anonymous_id"] = f"dev_{rng.randrange(self._devices):07x}"
        else:
            device = rng.randrange(self._devices)
            obj["user_id"] = f"usr_{device % self._users:06d}"
            obj["anonymous_id"] = f"dev_{device:07x}"
        # Client clocks: mostly Z, some with the device's offset, as the reference allows.
        ts = self._now - rng.uniform(0, 3600)
        if rng.random() < 0.8:
            obj["timestamp"] = _iso(ts)
        else:
            offset = timezone(timedelta(hours=rng.choice([-5, 1, 2, 9])))
            obj["timestamp"] = datetime.fromtimestamp(ts, offset).isoformat(timespec="seconds")
        props = {}
        names = list(spec.properties)
        # A realistic subset: most recommended properties, not always all of them.
        for prop in names:
            if rng.random() < 0.75:
                props[prop] = _value(prop, rng, self._now)
        if rng.random() < 0.2:  # custom properties beside the taxonomy's
            props["app_version"] = rng.choice(["5.2.0", "5.3.1", "5.4.0"])
            props["os"] = rng.choice(["ios", "android", "web"])
        obj["properties"] = props
        return obj

    def events(self, n: int) -> list[dict]:
        return [self.event() for _ in range(n)]


def batch_body(events: list[dict]) -> bytes:
    return orjson.dumps({"events": events})


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    """One body per line (JSON never contains a raw newline)."""
    for b in bodies:
        assert b"\n" not in b
    path.write_bytes(b"\n".join(bodies) + b"\n")
    return path


def make_bodies(
    directory: Path, *, seed: int, batch_bodies: int, batch_size: int = 1000, single_bodies: int = 2000
) -> dict:
    """The request bodies of a run: `batch_bodies` distinct 1,000-event batches and `single_bodies` single
    events, written to files for wrk and the load generator. Returns paths and sizes."""
    src = EventSource(seed=seed)
    batches = [batch_body(src.events(batch_size)) for _ in range(batch_bodies)]
    singles = [orjson.dumps(e) for e in src.events(single_bodies)]
    batch_path = write_bodies(directory / "batch_bodies.jsonl", batches)
    single_path = write_bodies(directory / "single_bodies.jsonl", singles)
    return {
        "batch_path": str(batch_path),
        "single_path": str(single_path),
        "batch_size": batch_size,
        "batch_body_bytes_avg": sum(map(len, batches)) / len(batches),
        "single_body_bytes_avg": sum(map(len, singles)) / len(singles),
    }


def normalized_events(n: int, *, seed: int, pool: int = 50_000) -> list[dict]:
    """`n` events as the front door enqueues them: validated and normalized, each with a fresh event id
    (ingest_api.ids, as the front door makes them). A pool of up to `pool` distinct events is generated and
    validated once, then repeated with new ids, so preparing 500k events takes seconds."""
    from ingest_api.ids import new_event_ids
    from schemas.events import EventValidator

    validator = EventValidator()
    distinct = [validator.validate(e) for e in EventSource(seed=seed).events(min(n, pool))]
    out = []
    while len(out) < n:
        size = min(1000, n - len(out))
        ids = new_event_ids(size, time.time())
        base = len(out)
        out.extend({"event_id": ids[i], **distinct[(base + i) % len(distinct)]} for i in range(size))
    return out


def request_records(
    events: list[dict], partitions: int, workspace: str, per_request: int = 1000
) -> Iterator[list[tuple[int, bytes, int]]]:
    """The queue records the front door would publish for `events` arriving `per_request` per request:
    per request, a list of (partition, envelope bytes, events in it), grouped exactly as
    ingest_api.enqueue."""
    from schemas import envelope

    for start in range(0, len(events), per_request):
        received_at = _iso(time.time())
        groups: dict[int, list[dict]] = {}
        for e in events[start : start + per_request]:
            groups.setdefault(envelope.partition_for(envelope.partition_key(e), partitions), []).append(e)
        records = []
        for partition, group in groups.items():
            values = envelope.encode_records(workspace, received_at, group)
            assert len(values) == 1, "a request's partition group never exceeds MAX_RECORD_BYTES here"
            records.append((partition, values[0], len(group)))
        yield records
