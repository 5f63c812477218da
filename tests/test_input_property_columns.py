"""docs/analytics.md: through the front door, a typed property column always holds the value as sent. On the
real embedded warehouse: every integer and number the validator accepts for a typed column lands in it (not
NULL, not another value); a number the column cannot hold is refused at the door instead of stored as NULL."""

from __future__ import annotations

import uuid

import orjson
import pytest

from consumer.writer import BatchWriter
from deploy.clickhouse import connect
from deploy.settings import Settings
from schemas import envelope, warehouse
from schemas.events import EventInvalid, EventValidator
from schemas.migrations import apply_migrations
from schemas.taxonomy import PROPERTY_TYPES

from .warehouse_process import start_warehouse, stop_warehouse

# JSON number texts, as a client writes them: orjson reads integers up to 2**64 - 1 as int, larger ones (and
# anything with a fraction or exponent) as float, and refuses what overflows a float (1e400: invalid_json).
INTEGERS = [
    "0",
    "-1",
    "7",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1" + "0" * 30,
]
NUMBERS = INTEGERS + [
    "59.99",
    "-0.0",
    "1e-400",
    "5e-324",
    "1.7976931348623157e308",
    "-1.7976931348623157e308",
    "9007199254740993",
]
TYPED = {
    name: type_name
    for name, type_name in PROPERTY_TYPES.items()
    if name in warehouse.PROPERTY_COLUMNS and type_name in ("integer", "number")
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    proc, url = start_warehouse(tmp_path_factory.mktemp("warehouse"))
    database = f"flokit_{uuid.uuid4().hex[:8]}"
    settings = {"FLOKIT_CLICKHOUSE_URL": url, "FLOKIT_CLICKHOUSE_DATABASE": database}
    connection = connect(Settings.from_env({**settings, "FLOKIT_CLICKHOUSE_DATABASE": "default"}))
    apply_migrations(connection, database)
    yield connection, database
    connection.close()
    assert stop_warehouse(proc) == 0


def test_the_typed_number_columns_are_the_ones_checked():
    assert {
        "renewal_number": "integer",
        "trial_length_days": "integer",
        "price": "number",
        "revenue": "number",
    }.items() <= TYPED.items()


def test_every_accepted_number_lands_in_its_column_as_sent(client):
    connection, database = client
    validator = EventValidator()
    accepted, refused = [], []
    for name, type_name in TYPED.items():
        for text in INTEGERS if type_name == "integer" else NUMBERS:
            sent = orjson.loads(text)
            raw = {
                "event": "renewal",
                "user_id": "u1",
                "timestamp": "2024-03-15T14:22:00Z",
                "properties": {name: sent},
            }
            try:
                event = validator.validate(raw)
            except EventInvalid as exc:
                assert exc.code == "invalid_property_type" and f"properties.{name}" in exc.message
                refused.append((name, text))
                continue
            event_id = f"evt_{len(accepted)}"
            accepted.append((event_id, name, sent))
            [line] = envelope.decode(
                envelope.encode_records(
                    "acme", "2024-03-15T14:22:01.000Z", [{"event_id": event_id, **event}]
                )[0]
            ).rows
            BatchWriter(connection, database).write(
                warehouse.EVENTS_TABLE, warehouse.EVENT_COLUMNS, line, event_id
            )
    columns = ", ".join(TYPED)
    rows = {
        row[0]: dict(zip(TYPED, row[1:], strict=True))
        for row in connection.query(f"SELECT event_id, {columns} FROM {database}.events").result_rows
    }
    stored = [(name, sent, rows[event_id][name]) for event_id, name, sent in accepted]
    # A number column holds the Float64 nearest to what was sent, as a float would anywhere.
    expected = {"integer": lambda sent: sent, "number": float}
    assert [
        (name, sent, value)
        for name, sent, value in stored
        if value is None or value != expected[TYPED[name]](sent)
    ] == []
    # Both sides of the line are exercised: the column's extremes are accepted, what lies past them is not.
    assert ("renewal_number", 2**63 - 1, 2**63 - 1) in stored and (
        "renewal_number",
        -(2**63),
        -(2**63),
    ) in stored
    assert ("renewal_number", "18446744073709551615") in refused
    assert ("renewal_number", "9223372036854775808") in refused and ("price", 2**64 - 1, 2.0**64) in stored
