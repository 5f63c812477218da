"""The Python client (client/, `flokit_client`) against the real front door in the embedded mode (local log,
SQLite state): exactly once from many threads, per-event rejections to on_error, a full queue, a lost answer,
413 splits, a refused key, process exit and fork. Arrival is checked in the queue itself, by event."""

from __future__ import annotations

import datetime as dt
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict

import pytest

from deploy.queue.local_log import LocalLogSubscriber
from flokit_client import Client
from ingest_api.state.sqlite_state import SqliteState
from schemas import envelope

from .services import ROOT, api_server, free_port, unique

PROPS = {"paywall_id": "pw_annual_v3", "offer_id": "offer_intro_50pct", "context": "onboarding_step_3"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("client-embedded")


@pytest.fixture(scope="module")
def state(data_dir):
    store = SqliteState(data_dir / "frontdoor.sqlite3")  # the file the embedded front door reads
    yield store
    store.close()


@pytest.fixture(scope="module")
def server(data_dir, state):
    with api_server({"FLOKIT_DATA_DIR": str(data_dir)}, workers=2) as srv:
        yield srv


@pytest.fixture
def key(state):
    workspace = unique("ws")
    state.configure_workspace(workspace, rate_limit_per_minute=1_000_000)
    return state.create_key(workspace)


def queued_events(data_dir) -> list[dict]:
    """Every event now in the embedded queue (read as a consumer group of its own, from the start)."""
    subscriber = LocalLogSubscriber(data_dir / "queue.sqlite3", unique("reader"))
    events = []
    try:
        while messages := subscriber.poll(100_000, 0.2):
            for message in messages:
                events.extend(envelope.decode(message.value).documents())
    finally:
        subscriber.close()
    return events


def arrivals(events: list[dict], run: str) -> dict[int, list[str]]:
    """seq → the event ids queued for it, for the events of one run."""
    by_seq = defaultdict(list)
    for event in events:
        props = event["properties"] or {}
        if props.get("run") == run:
            by_seq[props["seq"]].append(event["event_id"])
    return by_seq


def assert_exactly_once(by_seq: dict[int, list[str]], seqs, *, same_id_copies: bool = False) -> None:
    """Every seq queued once: one record, or with `same_id_copies` possibly several under one event id (a copy
    a broker outage left behind, which consumers drop by event id: README, "A 200 means durably queued")."""
    seqs = set(seqs)
    missing = seqs - by_seq.keys()
    extra = by_seq.keys() - seqs
    twice = {seq: ids for seq, ids in by_seq.items() if len(set(ids) if same_id_copies else ids) != 1}
    assert not missing and not extra and not twice, (
        f"{len(missing)} missing (e.g. {sorted(missing)[:5]}), {len(extra)} unexpected,"
        f" {len(twice)} queued more than once (e.g. {list(twice.items())[:3]})"
    )


def track_from_threads(client: Client, run: str, threads: int, per_thread: int) -> None:
    def work(t):
        for i in range(per_thread):
            client.track(
                "paywall_viewed",
                anonymous_id=f"dev_{t}_{i % 50}",
                properties={**PROPS, "run": run, "seq": t * per_thread + i},
            )

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    [w.start() for w in workers]
    [w.join() for w in workers]


def test_100k_events_from_8_threads_arrive_exactly_once(server, key, data_dir):
    run = unique("run")
    # A queue far smaller than the load: the 8 threads wait for room ("block") and nothing is dropped.
    client = Client(key, server.url, on_full="block", max_queue_size=2_000)
    started = time.monotonic()
    track_from_threads(client, run, threads=8, per_thread=12_500)
    assert client.flush(timeout=120)
    elapsed = time.monotonic() - started
    stats = client.stats()
    client.close()
    assert (stats.tracked, stats.delivered, stats.rejected, stats.failed, stats.dropped, stats.pending) == (
        100_000,
        100_000,
        0,
        0,
        0,
        0,
    ), stats
    assert 100 <= stats.requests <= 110, stats  # full batches of 1,000 (the last ones may be partial)
    assert_exactly_once(arrivals(queued_events(data_dir), run), range(100_000))
    assert elapsed < 90, elapsed  # generous: ~5 s on the development machine


def test_rejected_events_reach_on_error_and_the_rest_arrive(server, key, data_dir):
    run = unique("run")
    errors = []
    client = Client(
        key, server.url, on_error=lambda event, error, message: errors.append((event, error, message))
    )
    good = {"run": run}
    assert client.track("paywall_viewed", user_id="usr_1", properties={**good, "seq": 0})
    assert client.track("Paywall Viewed", user_id="usr_1", properties={**good, "seq": 1})  # not snake_case
    assert client.track("paywall_viewed", properties={**good, "seq": 2})  # no identity
    no_offset = "2024-03-15 14:22"
    assert client.track("paywall_viewed", user_id="usr_1", timestamp=no_offset, properties={**good, "seq": 3})
    # NaN cannot travel as JSON: refused at once, alone, instead of making the whole batch invalid JSON.
    assert not client.track("paywall_viewed", user_id="usr_1", properties={**good, "seq": 4, "x": math.nan})
    assert client.track(
        "paywall_viewed",
        user_id="usr_1",
        timestamp=dt.datetime(2024, 3, 15, 16, 22, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        properties={**good, "seq": 5},
    )
    assert client.flush(timeout=60)
    # A batch with no valid event at all is a 400 no_valid_events: every event still reaches on_error.
    assert client.track(
        "purchase_completed", user_id="usr_1", properties={**good, "seq": 6, "price": "a lot"}
    )
    assert client.flush(timeout=60)
    client.close()

    by_seq = {e[0]["properties"]["seq"]: e for e in errors}
    assert {seq: error for seq, (_, error, _) in by_seq.items()} == {
        1: "invalid_event_name",
        2: "missing_identity",
        3: "invalid_timestamp",
        4: "unserializable_event",
        6: "invalid_property_type",
    }
    # The event as it was sent.
    assert by_seq[1][0] == {
        "event": "Paywall Viewed",
        "user_id": "usr_1",
        "properties": {**good, "seq": 1},
        "timestamp": by_seq[1][0]["timestamp"],
    }
    assert "snake_case" in by_seq[1][2] and "NaN" in by_seq[4][2]
    assert client.stats().rejected == 5 and client.stats().delivered == 2
    queued = {
        e["properties"]["seq"]: e
        for e in queued_events(data_dir)
        if (e["properties"] or {}).get("run") == run
    }
    assert sorted(queued) == [0, 5]
    # The timestamp defaults to now, UTC.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", queued[0]["timestamp"])
    assert abs(
        dt.datetime.fromisoformat(queued[0]["timestamp"][:-1]).replace(tzinfo=dt.UTC)
        - dt.datetime.now(dt.UTC)
    ) < dt.timedelta(minutes=5)
    assert queued[5]["timestamp"] == "2024-03-15T14:22:05.123Z"  # an aware datetime, in UTC


def test_wrong_argument_types_raise_at_once(server, key):
    with Client(key, server.url) as client:
        with pytest.raises(TypeError, match="event must be a str"):
            client.track(None, user_id="usr_1")
        with pytest.raises(TypeError, match="properties must be a mapping"):
            client.track("paywall_viewed", user_id="usr_1", properties=[1, 2])
        with pytest.raises(ValueError, match="naive datetime"):
            client.track("paywall_viewed", user_id="usr_1", timestamp=dt.datetime(2024, 3, 15, 14, 22))
        assert client.stats().tracked == 0


def test_a_full_queue_drops_and_counts_and_track_never_waits():
    """Nothing listens at the host (connection refused, for real): the queue fills and stays full."""
    errors = []
    client = Client(
        "fk_000000000000_" + "x" * 43,
        f"http://127.0.0.1:{free_port()}",
        max_queue_size=100,
        on_error=lambda event, error, message: errors.append(error),
    )
    started = time.monotonic()
    results = [client.track("paywall_viewed", user_id="usr_1", properties={"seq": i}) for i in range(5_000)]
    assert time.monotonic() - started < 20  # generous: a few ms of JSON per thousand events
    assert results.count(True) == 100 and results[:100] == [True] * 100
    stats = client.stats()
    assert (stats.dropped, stats.pending, stats.delivered) == (4_900, 100, 0)
    started = time.monotonic()
    assert client.close(timeout=1) is False  # still retrying: close gives up on time
    assert time.monotonic() - started < 1 + 1 + 2  # its timeout, the grace to report, noise
    assert errors == ["client_closed"] * 100
    assert not client.track("paywall_viewed", user_id="usr_1")  # closed: dropped, counted
    assert client.stats().dropped == 4_901 and client.stats().failed == 100 and client.stats().retries >= 1


def test_a_refused_key_reaches_on_error_without_retries(server):
    errors = []
    client = Client("fk_000000000000_" + "x" * 43, server.url, on_error=lambda *error: errors.append(error))
    for i in range(3):
        client.track("paywall_viewed", user_id="usr_1", properties={"seq": i})
    assert client.flush(timeout=30)
    client.close()
    assert [(event["properties"]["seq"], error) for event, error, _ in errors] == [
        (0, "invalid_api_key"),
        (1, "invalid_api_key"),
        (2, "invalid_api_key"),
    ]
    assert client.stats().rejected == 3 and client.stats().retries == 0


def test_batches_over_the_servers_body_cap_are_split_and_arrive_once(data_dir, state, key):
    """A front door capping bodies at 100 KB, below a 1,000-event batch of these events (~300 KB)."""
    run = unique("run")
    errors = []
    with api_server(
        {"FLOKIT_DATA_DIR": str(data_dir), "FLOKIT_MAX_BODY_BYTES": "100000"}, workers=1
    ) as small:
        client = Client(key, small.url, on_full="block", on_error=lambda *error: errors.append(error))
        for seq in range(5_000):
            client.track("paywall_viewed", user_id=f"usr_{seq}", properties={**PROPS, "run": run, "seq": seq})
        # One event alone over the cap (its properties are over the API's 32 KiB too): refused, reported.
        client.track(
            "paywall_viewed", user_id="usr_big", properties={"run": run, "seq": -1, "blob": "x" * 150_000}
        )
        assert client.flush(timeout=120)
        client.close()
    stats = client.stats()
    assert stats.delivered == 5_000 and stats.rejected == 1, stats
    assert [(event["properties"]["seq"], error) for event, error, _ in errors] == [(-1, "payload_too_large")]
    # The first batch (~300 KB) is split, and its first half (~150 KB) too; after that the client keeps its
    # batches under the size the server took, instead of being refused again for every batch.
    assert 1 <= stats.splits <= 3, stats
    assert_exactly_once(arrivals(queued_events(data_dir), run), range(5_000))


class AnswerDroppingProxy:
    """A TCP proxy in front of the real front door that passes each request on whole and, for the first
    `drop` of them, closes the client's connection instead of passing the answer back: the server took the
    batch, the client never hears so. A fault injected on purpose: an answer lost on the way back cannot be
    produced for real on loopback. It records each request's headers."""

    def __init__(self, upstream_port: int, drop: int):
        self.upstream_port, self.drop = upstream_port, drop
        self.requests: list[dict[str, str]] = []
        self.replayed: list[bool] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn, socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
            reader, upstream_reader = conn.makefile("rb"), upstream.makefile("rb")
            while True:
                request = self._read_message(reader)
                if request is None:
                    return
                head, headers, body = request
                self.requests.append(headers)
                upstream.sendall(head + body)
                answer_head, answer_headers, answer_body = self._read_message(upstream_reader)
                self.replayed.append(answer_headers.get("idempotent-replayed") == "true")
                if len(self.requests) <= self.drop:
                    return  # the answer is lost: close both connections
                conn.sendall(answer_head + answer_body)

    @staticmethod
    def _read_message(reader):
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = reader.readline()
            if not line:
                return None
            head += line
        headers = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return head, headers, reader.read(int(headers.get("content-length", 0)))

    def close(self):
        self.listener.close()


def test_a_lost_answer_is_retried_under_the_same_key_and_counted_once(server, key, data_dir):
    run = unique("run")
    proxy = AnswerDroppingProxy(server.port, drop=2)
    try:
        client = Client(key, proxy.url)
        for seq in range(3_000):
            client.track("paywall_viewed", user_id="usr_1", properties={"run": run, "seq": seq})
        assert client.flush(timeout=60)
        client.close()
    finally:
        proxy.close()
    stats = client.stats()
    assert (stats.delivered, stats.requests, stats.retries) == (3_000, 5, 2), stats
    keys = [headers["idempotency-key"] for headers in proxy.requests]
    assert keys[0] == keys[1] == keys[2] and len(set(keys)) == 3  # the batch whose answers were lost, 3 times
    # The server answered its retries from the record.
    assert proxy.replayed == [False, True, True, False, False]
    assert {headers["content-encoding"] for headers in proxy.requests} == {"gzip"}
    assert_exactly_once(arrivals(queued_events(data_dir), run), range(3_000))


EXIT_SCRIPT = """
import sys
from flokit_client import Client
client = Client(sys.argv[1], sys.argv[2], flush_interval=3600)  # only a full batch, or the exit, sends
for seq in range(2_500):
    client.track("paywall_viewed", user_id="usr_exit", properties={"run": sys.argv[3], "seq": seq})
"""


def test_process_exit_flushes(server, key, data_dir):
    run = unique("run")
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, key, server.url, run],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert_exactly_once(arrivals(queued_events(data_dir), run), range(2_500))


FORK_SCRIPT = """
import os, sys
from flokit_client import Client
client = Client(sys.argv[1], sys.argv[2], flush_interval=3600)
for seq in range(10):
    client.track("paywall_viewed", user_id="usr_parent", properties={"run": sys.argv[3], "seq": seq})
pid = os.fork()
if pid == 0:  # the child: its own events only (the parent's 10 are the parent's to send)
    for seq in range(100, 105):
        client.track("paywall_viewed", user_id="usr_child", properties={"run": sys.argv[3], "seq": seq})
    sys.exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_child_sends_its_own_events_and_not_its_parents(server, key, data_dir):
    run = unique("run")
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, key, server.url, run],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert_exactly_once(arrivals(queued_events(data_dir), run), [*range(10), *range(100, 105)])
