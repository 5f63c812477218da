"""Event ids: `evt_` + a lowercase ULID (48-bit millisecond time, 80 random bits).

Ids of one request share the time and a random base and count up from it, so
they sort in request order as well as by time."""

from __future__ import annotations

import secrets

from ulid import ULID

PREFIX = "evt_"


def new_event_ids(count: int, now: float) -> list[str]:
    base = (int(now * 1000) << 80) | secrets.randbits(79)  # 79 bits: room to count up
    return [PREFIX + str(ULID.from_int(base + i)).lower() for i in range(count)]
