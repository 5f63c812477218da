"""deploy/warehouse/sessions.py: one query at a time per session; the next one waits for the previous to
finish (its client may already hold the whole response), a truly concurrent one is refused."""

from __future__ import annotations

import threading
import time

import pytest

from deploy.warehouse import sessions
from deploy.warehouse.errors import ClickHouseError


def hold(store: sessions.Sessions, seconds: float, entered: threading.Event) -> threading.Thread:
    def run():
        with store.use("s1", 60, check=False):
            entered.set()
            time.sleep(seconds)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_query_waits_for_the_sessions_previous_one_to_finish():
    store, entered = sessions.Sessions(), threading.Event()
    thread = hold(store, 0.2, entered)
    entered.wait(5)
    with store.use("s1", 60, check=True) as session:  # arrives while the first still holds the session
        assert session is not None
    thread.join()


def test_a_concurrent_query_in_one_session_is_refused(monkeypatch):
    monkeypatch.setattr(sessions, "LOCK_WAIT_SECONDS", 0.1)
    store, entered = sessions.Sessions(), threading.Event()
    thread = hold(store, 1.0, entered)
    entered.wait(5)
    with pytest.raises(ClickHouseError, match="locked by a concurrent client"):
        with store.use("s1", 60, check=True):
            pass
    thread.join()
