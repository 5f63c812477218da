"""BatchWriter: the one path by which rows reach ClickHouse (clickhouse-connect).

Errors are sorted, because the worker answers them differently: RowsRejected —
these rows can never be stored (ClickHouse cannot parse or accept a value): the
worker sends their messages to the dead-letter topic; any other failure is raised
as it is, and consumer/transient.py tells what the worker waits out (ClickHouse
unreachable, overloaded, a table missing: the same batch is retried, nothing
committed meanwhile) from what stops it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from schemas.warehouse import INSERT_FORMAT, INSERT_SETTINGS, quote_identifier

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

# ClickHouse error codes that mean "this data", not "this server".
DATA_ERROR_CODES = {
    6,  # CANNOT_PARSE_TEXT
    27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,  # CANNOT_PARSE_DATE
    41,  # CANNOT_PARSE_DATETIME
    53,  # TYPE_MISMATCH
    69,  # ARGUMENT_OUT_OF_BOUND
    70,  # CANNOT_CONVERT_TYPE
    72,  # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    469,  # VIOLATED_CONSTRAINT
}


class RowsRejected(Exception):
    """ClickHouse (or the client's encoding for it) cannot take these rows."""


class BatchWriter:
    def __init__(self, client: Client, database: str) -> None:
        self._client = client
        self._qualifier = quote_identifier(database) + "."

    def write(
        self, table: str, columns: Sequence[str], body: bytes | Iterable[bytes | memoryview], token: str
    ) -> None:
        """Insert `body` (JSONEachRow rows, schemas.warehouse; bytes or an iterator of chunks) as one
        block. ClickHouse drops a block whose token it has seen recently, so writing the same batch again
        stores it once."""
        if isinstance(body, bytes) and not body:
            return
        try:
            self._client.raw_insert(
                self._qualifier + table,
                columns,
                # Typed Generator[bytes], but it sends any iterable of bytes-like chunks as they come.
                body,  # type: ignore[arg-type]
                fmt=INSERT_FORMAT,
                settings={**INSERT_SETTINGS, "insert_deduplication_token": token},
            )
        except OperationalError:
            raise
        except DatabaseError as exc:
            if exc.code in DATA_ERROR_CODES:
                raise RowsRejected(str(exc)) from exc
            raise
