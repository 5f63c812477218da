"""consumer.rows.edited: a record's event lines without the dropped events and with linked_user_id on
the linked ones, as pieces that leave untouched lines as views of the record."""

from __future__ import annotations

import random

import orjson

from consumer.rows import edited
from schemas import warehouse

HEADER = b'{"v":2,"events":[]}\n'


def record_of(n: int, rng: random.Random) -> tuple[bytes, memoryview]:
    lines = [orjson.dumps({"event_id": f"evt_{i}", "pad": "x" * rng.randrange(8)}) for i in range(n)]
    record = HEADER + b"\n".join(lines)
    return record, memoryview(record)[len(HEADER) :]


def expected(lines: memoryview, linked_at: dict[int, str], dropped: set[int]) -> list[bytes]:
    return [
        warehouse.event_row(line, linked_at.get(i))
        for i, line in enumerate(bytes(lines).split(b"\n"))
        if i not in dropped
    ]


def test_edited_rows_are_the_kept_lines_with_their_links_in_order():
    rng = random.Random(7)
    for n in (1, 2, 3, 10, 60):
        record, lines = record_of(n, rng)
        for _ in range(100):
            dropped = {i for i in range(n) if rng.random() < 0.2}
            linked_at = {i: f"usr_{i}" for i in range(n) if i not in dropped and rng.random() < 0.3}
            pieces = edited(lines, linked_at, dropped)
            body = b"".join(bytes(p) for p in pieces)
            # Blank lines (an edited last line) are skipped by ClickHouse's JSONEachRow.
            assert [row for row in body.split(b"\n") if row] == expected(lines, linked_at, dropped)
            # Only the edited lines are copies; every other piece is a view of the record itself.
            assert sum(not isinstance(p, memoryview) for p in pieces) == len(linked_at)
            assert all(p.obj is record for p in pieces if isinstance(p, memoryview))


def test_every_line_dropped_leaves_nothing():
    record, lines = record_of(5, random.Random(1))
    assert edited(lines, {}, set(range(5))) == []
