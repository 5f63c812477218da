"""Which failures a worker waits out, retrying the same batch and committing nothing meanwhile, and which
stop it.

Waited out: what may go away by itself. The warehouse unreachable or the connection lost
(clickhouse-connect's OperationalError, ConnectionError, TimeoutError); ClickHouse answering with an error
about itself rather than about the rows (overloaded, too many parts, out of memory, a table missing until
`flokit migrate` has run); the dead-letter queue unavailable (QueueUnavailable). Rows ClickHouse cannot
take never get here: the writer turns those into RowsRejected, and their messages become dead letters.

Anything else is a bug or a misconfiguration that retrying cannot fix: it stops the worker loudly, before
the batch is committed, so the batch is delivered again to whichever worker runs next.
"""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from schemas.queue import QueueUnavailable

from .writer import DATA_ERROR_CODES


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (OperationalError, QueueUnavailable, ConnectionError, TimeoutError)):
        return True
    # The server's own error answer (clickhouse-connect raises the base class for it; its subclasses are the
    # client's complaints about how it was called).
    return type(exc) is DatabaseError and exc.code not in DATA_ERROR_CODES
