"""anonymous_id → user_id links as the worker knows them at ingest.

Policy (the same as the warehouse's identity_resolved view): the first link
wins. A device's anonymous id belongs to the first user seen with it; a later
event pairing it with another user does not move it (that event keeps its own
user_id). One user may own many anonymous ids.

The worker stamps `linked_user_id` on anonymous-only events whose link it
already knows. Anonymous ids it has not seen in this process are looked up in
the warehouse once per batch; what it learns is remembered (bounded),
including "no link yet": every event of an anonymous id goes through the same
partition, so while this process owns that partition no other consumer can
link it. That is forgotten when partitions are revoked. `linked_user_id` is a
hint in any case: the analysts' views resolve identities at query time
(docs/analytics.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from typing import TYPE_CHECKING

from schemas.warehouse import IDENTITY_RESOLVED_VIEW, quote_identifier

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

Pair = tuple[str, str]  # (workspace, anonymous_id)


def resolve_links(client: Client, database: str, pairs: set[Pair]) -> dict[Pair, str]:
    """The known user id of each (workspace, anonymous_id) pair that has one, by the identity policy
    (first link wins), in one query against identity_resolved. Pairs without a link are absent."""
    if not pairs:
        return {}
    # Server-side parameter: no quoting of our own, and clickhouse-connect moves large values into
    # the request body (form encoding) so URL limits and max_query_size do not apply.
    rows = client.query(
        f"SELECT workspace, anonymous_id, user_id FROM {quote_identifier(database)}.{IDENTITY_RESOLVED_VIEW} "
        "WHERE (workspace, anonymous_id) IN {pairs:Array(Tuple(String, String))}",
        parameters={"pairs": sorted(pairs)},
    ).result_rows
    return {(workspace, anonymous_id): user_id for workspace, anonymous_id, user_id in rows}


class IdentityCache:
    def __init__(self, lookup: Callable[[set[Pair]], dict[Pair, str]], capacity: int = 200_000) -> None:
        self._lookup = lookup
        self._capacity = capacity
        self._known: dict[Pair, str | None] = {}  # None: looked up, no link yet

    def prefetch(self, pairs: Iterable[Pair]) -> None:
        """Look up, in one query, the pairs this worker has never resolved."""
        missing = {p for p in pairs if p not in self._known}
        if missing:
            found = self._lookup(missing)
            for pair in missing:
                self._known[pair] = found.get(pair)
            self._trim()

    def link(self, pair: Pair, user_id: str) -> None:
        """An event carried both ids: the link holds unless the anonymous id already has one."""
        if self._known.get(pair) is None:
            self._known[pair] = user_id

    def forget_unlinked(self) -> None:
        """Drop the "no link yet" answers: look those anonymous ids up again."""
        self._known = {pair: user for pair, user in self._known.items() if user is not None}

    def user_for(self, pair: Pair) -> str | None:
        return self._known.get(pair)

    def _trim(self) -> None:
        overflow = len(self._known) - self._capacity
        if overflow > 0:
            for stale in list(islice(self._known, overflow)):
                del self._known[stale]
