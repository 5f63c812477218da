"""The fault suite's harness: a bounded load generator and the count that ends every scenario.

    load = LoadGenerator(server.url, key).start()
    ...inject a fault, restore the service...
    load.stop()                       # no new requests; those in hand retry until a 200 (or drain_seconds)
    tally = count_in_warehouse(client, database, workspace, load)
    tally.assert_exact()              # 0 lost, 0 duplicated, nothing stored that was not acknowledged

Each logical request carries an Idempotency-Key and is retried with the SAME key after a 503, a 409, a
connection error or a timeout until it gets a 200 or the run ends, so a request the front door did take
but whose answer was lost comes back as a replay, never as a second copy. Every event says which request
and which position in it it is (`properties.fault_key`, `properties.n`), so the checker can tell a row
that was never acknowledged, or a copy of an acknowledged event under another id, from a duplicate id.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import requests

EVENT_TIME = "2024-03-15T14:00:00Z"
RETRIED_STATUSES = {409, 503}  # 409: the same key still in flight (e.g. on a front door that just stopped)


@dataclass
class Answer:
    """One attempt of one request, as the client saw it."""

    key: str
    attempt: int
    sent_at: float  # time.monotonic() when the request was sent
    latency: float  # seconds until the answer (or the error)
    status: int | None  # None: no HTTP answer (see error)
    error: str = ""  # the body's error code, or for no answer: refused, reset, timeout
    retry_after: str | None = None
    replayed: bool = False  # Idempotent-Replayed: true

    @property
    def answered_at(self) -> float:
        return self.sent_at + self.latency


@dataclass
class Request:
    """One logical request: its key, its events and every attempt until it was acknowledged (or the run
    ended)."""

    key: str
    path: str
    events: list[dict]
    answers: list[Answer] = field(default_factory=list)
    event_ids: list[str] | None = None  # from its 200

    @property
    def acknowledged(self) -> bool:
        return self.event_ids is not None


def _no_answer(exc: requests.RequestException) -> str:
    """What kind of failure a request without an HTTP answer met: the server refused the connection (it was
    not listening), took it and dropped it without an answer (reset), or never answered in time."""
    if isinstance(exc, requests.Timeout) and not isinstance(exc, requests.ConnectTimeout):
        return "timeout"
    cause: BaseException | None = exc  # requests' error → urllib3's → the socket's
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
        cause = cause.__cause__ or cause.__context__
    return "reset"


class LoadGenerator:
    """`threads` clients, each posting requests one after another (keep-alive connections): a batch of up to
    `batch_size` events, and every `single_every`-th request a single event. Bounded: it stops by itself
    after `max_seconds`, and a stopped run gives the requests in hand `drain_seconds` to get their 200."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        threads: int = 3,
        batch_size: int = 20,
        single_every: int = 4,
        pause: float = 0.05,
        retry_pause: float = 0.5,
        timeout: float = 30.0,
        max_seconds: float = 300.0,
        drain_seconds: float = 45.0,
        keep_alive: bool = True,
    ):
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        if not keep_alive:
            self._headers["Connection"] = "close"
        self._threads = threads
        self._batch_size = batch_size
        self._single_every = single_every
        self._pause = pause
        # A client would wait Retry-After (5 s); the harness retries sooner so that a test sees the moment
        # the front door serves again. The Retry-After of every answer is recorded all the same.
        self._retry_pause = retry_pause
        self._timeout = timeout
        self._max_seconds = max_seconds
        self._drain_seconds = drain_seconds
        self._run = uuid.uuid4().hex[:8]
        self._serial = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._given_up_at = float("inf")  # after it, requests in hand are abandoned
        self._pool: list[threading.Thread] = []
        self.requests: list[Request] = []

    # --- running ---------------------------------------------------------

    def start(self) -> LoadGenerator:
        self._given_up_at = time.monotonic() + self._max_seconds
        self._pool = [
            threading.Thread(target=self._client, args=(t,), name=f"load-{t}", daemon=True)
            for t in range(self._threads)
        ]
        for thread in self._pool:
            thread.start()
        return self

    def stop(self, drain_seconds: float | None = None) -> LoadGenerator:
        """Start no new request; wait for those in hand to be acknowledged, at most drain_seconds."""
        drain = self._drain_seconds if drain_seconds is None else drain_seconds
        self._stopping.set()
        self._given_up_at = min(self._given_up_at, time.monotonic() + drain)
        for thread in self._pool:
            thread.join()
        return self

    def _client(self, t: int) -> None:
        session = requests.Session()
        try:
            while not self._stopping.is_set() and time.monotonic() < self._given_up_at:
                self._send(session, self._new_request(t))
                time.sleep(self._pause)
        finally:
            session.close()

    def _new_request(self, t: int) -> Request:
        serial = next(self._serial)
        key = f"{self._run}-{serial}"
        single = self._single_every and serial % self._single_every == self._single_every - 1
        size = 1 if single else 1 + serial % self._batch_size
        events = [
            {
                "event": "paywall_viewed",
                "anonymous_id": f"dev_{t}_{(serial + n) % 7}",
                "timestamp": EVENT_TIME,
                "properties": {"fault_key": key, "n": n},
            }
            for n in range(size)
        ]
        request = Request(key, "/v1/events" if single else "/v1/batch/events", events)
        with self._lock:
            self.requests.append(request)
        return request

    def _send(self, session: requests.Session, request: Request) -> None:
        body = orjson.dumps(request.events[0] if request.path == "/v1/events" else {"events": request.events})
        headers = {**self._headers, "Idempotency-Key": request.key}
        for attempt in itertools.count():
            if time.monotonic() >= self._given_up_at:
                return
            sent = time.monotonic()
            try:
                resp = session.post(
                    self.url + request.path, data=body, headers=headers, timeout=self._timeout
                )
            except requests.RequestException as exc:
                request.answers.append(
                    Answer(request.key, attempt, sent, time.monotonic() - sent, None, _no_answer(exc))
                )
                session.close()  # a fresh connection for the retry
                time.sleep(self._retry_pause)
                continue
            answer = Answer(
                request.key,
                attempt,
                sent,
                time.monotonic() - sent,
                resp.status_code,
                retry_after=resp.headers.get("Retry-After"),
                replayed=resp.headers.get("Idempotent-Replayed") == "true",
            )
            request.answers.append(answer)
            if resp.status_code == 200:
                document = resp.json()
                request.event_ids = (
                    document["event_ids"] if "event_ids" in document else [document["event_id"]]
                )
                return
            try:
                answer.error = resp.json().get("error", "")
            except ValueError:
                answer.error = "not json"
            if resp.status_code not in RETRIED_STATUSES:
                return  # a final answer that is not a 200: the scenario's assertions report it
            time.sleep(min(self._retry_pause, float(answer.retry_after or 1)))

    # --- what happened ---------------------------------------------------

    def answers(self) -> list[Answer]:
        with self._lock:
            return sorted((a for r in self.requests for a in list(r.answers)), key=lambda a: a.sent_at)

    def acknowledged_events(self) -> int:
        with self._lock:
            return sum(len(r.event_ids) for r in self.requests if r.event_ids is not None)

    def wait_for_acknowledged(self, events: int, timeout: float = 60) -> None:
        """Block until at least `events` events got a 200 since the start."""
        from .services import wait_until

        wait_until(
            lambda: self.acknowledged_events() >= events,
            timeout=timeout,
            interval=0.1,
            message=f"{events} acknowledged events",
        )

    def statuses(self) -> Counter:
        return Counter(a.status if a.status is not None else a.error for a in self.answers())

    def summary(self) -> str:
        acked = sum(r.acknowledged for r in self.requests)
        return (
            f"{len(self.requests)} requests, {acked} acknowledged ({self.acknowledged_events()} events); "
            f"answers: {dict(self.statuses())}"
        )


# --- the count -------------------------------------------------------------


@dataclass
class Tally:
    """The scenario's end: what got a 200 against what is in events_deduped."""

    acknowledged: int  # events that got a 200
    stored: int  # rows of the workspace in events_deduped
    lost: list[str]  # acknowledged event ids not stored
    duplicated: dict[str, int]  # event id → rows, for ids stored more than once
    copies: dict[tuple[str, int], int]  # (request key, position) → rows, for events stored under several ids
    unexplained: list[tuple[str, str, int]]  # rows neither acknowledged nor left by a request without a 200
    unacknowledged_stored: int  # rows of requests that never got a 200 (their attempts may have enqueued)

    def assert_exact(self) -> None:
        assert not self.lost, f"{len(self.lost)} acknowledged events lost, e.g. {self.lost[:5]} ({self})"
        assert not self.duplicated, f"{len(self.duplicated)} event ids stored more than once ({self})"
        assert not self.copies, f"{len(self.copies)} events stored under more than one id ({self})"
        assert not self.unexplained, (
            f"{len(self.unexplained)} stored rows nobody sent or acknowledged ({self})"
        )

    def __str__(self) -> str:
        return (
            f"acknowledged {self.acknowledged}, stored {self.stored}, lost {len(self.lost)}, "
            f"duplicated {len(self.duplicated)}, copies {len(self.copies)}, "
            f"unexplained {len(self.unexplained)},"
            f" stored without a 200 {self.unacknowledged_stored}"
        )


def stored_rows(client, database: str, workspace: str) -> list[tuple[str, str, int]]:
    """(event_id, request key, position) of every row of `workspace` in events_deduped."""
    return [
        tuple(row)
        for row in client.query(
            f"SELECT event_id, JSONExtractString(properties, 'fault_key'), JSONExtractInt(properties, 'n')"
            f" FROM `{database}`.events_deduped WHERE workspace = {{ws:String}}",
            parameters={"ws": workspace},
        ).result_rows
    ]


def tally(requests_sent: list[Request], rows: list[tuple[str, str, int]]) -> Tally:
    acked = {
        event_id: request for request in requests_sent if request.event_ids for event_id in request.event_ids
    }
    by_key = {request.key: request for request in requests_sent}
    ids = Counter(event_id for event_id, _, _ in rows)
    positions = Counter((key, n) for _, key, n in set(rows))
    unexplained, without_200 = [], 0
    for event_id, key, n in rows:
        request = by_key.get(key)
        if request is not None and not request.acknowledged and request.answers:
            without_200 += 1  # an attempt that got no 200 may still have enqueued
        elif request is None or event_id not in acked:
            unexplained.append((event_id, key, n))
    return Tally(
        acknowledged=len(acked),
        stored=len(rows),
        lost=sorted(set(acked) - set(ids)),
        duplicated={i: c for i, c in ids.items() if c > 1},
        copies={p: c for p, c in positions.items() if c > 1},
        unexplained=unexplained,
        unacknowledged_stored=without_200,
    )


def count_in_warehouse(
    client, database: str, workspace: str, load: LoadGenerator, timeout: float = 120
) -> Tally:
    """Wait until every acknowledged event is in the warehouse and the row count has stopped moving (the
    consumer has caught up), then count."""
    expected = load.acknowledged_events()

    def count():
        return client.query(
            f"SELECT uniqExact(event_id) FROM `{database}`.events WHERE workspace = {{ws:String}}",
            parameters={"ws": workspace},
        ).result_rows[0][0]

    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        now = count()
        if now >= expected and now == last:
            break
        last = now
        time.sleep(2.0)
    return tally(load.requests, stored_rows(client, database, workspace))


# --- a full disk -------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str):
    """A small tmpfs mounted on `path` for the test's duration (mounting needs root: CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"a full disk needs a small filesystem of its own, and mounting a tmpfs on {path} failed "
            f"(it needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> int:
    """Write `directory`/filler until its filesystem is full; returns the bytes written. Delete it to free
    them."""
    written = 0
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return written


# --- a service stopped or frozen -------------------------------------------------


def service_pid(script: str, port: str) -> int:
    """The pid deploy/kafka.sh or deploy/redis.sh recorded for the service on `port`."""
    if script == "kafka.sh":
        pidfile = Path(os.environ.get("KAFKA_DIR", f"/tmp/flokit-kafka-{port}")) / "broker.pid"
    else:
        pidfile = Path(os.environ.get("REDIS_DIR", f"/tmp/flokit-redis-{port}")) / "redis.pid"
    return int(pidfile.read_text())


@contextmanager
def frozen(pid: int):
    """SIGSTOP `pid` for the block (it stays alive, holding its connections, answering nothing); SIGCONT
    after, whatever happens: the suite shares the service."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def in_window(answers: list[Answer], start: float, end: float) -> list[Answer]:
    """The answers to requests sent at or after `start` and answered by `end` (time.monotonic())."""
    return [a for a in answers if a.sent_at >= start and a.answered_at <= end]


def first_200_after(answers: list[Answer], moment: float) -> float | None:
    """Seconds from `moment` to the first 200 answered after it."""
    times = [a.answered_at for a in answers if a.status == 200 and a.answered_at > moment]
    return min(times) - moment if times else None
