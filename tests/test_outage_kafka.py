"""The front door through broker outages under load, on the session's own broker (stopped, or frozen with
SIGSTOP, and always brought back in a `finally` for the modules after this one): every request is answered
within the enqueue timeout, /readyz says not ready while nothing can be delivered, the front door heals by
itself, and a 503 retried with its Idempotency-Key ends with each event in the topic under one id."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import requests
from kafka.admin import KafkaAdminClient

from deploy.queue.kafka_queue import KafkaPublisher
from ingest_api.enqueue import MAY_ARRIVE, NOT_QUEUED, Enqueuer
from ingest_api.errors import ServiceUnavailable
from schemas import envelope

from .conftest import KAFKA_PORT
from .faults import frozen, service_pid
from .services import api_server, read_topic, run_script, wait_until

TIMEOUT = 2  # FLOKIT_ENQUEUE_TIMEOUT_SECONDS of the front doors here
BOUND = TIMEOUT + 1.5  # every answer comes within the timeout; the rest is margin for a busy machine
OUTAGE = 12  # seconds: long enough for several timeouts in a row


@contextmanager
def broker_stopped(topic: str):
    run_script("kafka.sh", "stop", KAFKA_PORT=KAFKA_PORT)
    try:
        yield
    finally:
        run_script("kafka.sh", "start", KAFKA_PORT=KAFKA_PORT)  # returns once the broker answers
        leading(topic)


@contextmanager
def broker_frozen(topic: str):
    try:
        with frozen(service_pid("kafka.sh", KAFKA_PORT)):  # connections still accepted by the kernel
            yield
    finally:
        leading(topic)


def leading(topic: str) -> None:
    """Wait until every partition of `topic` has a leader again: a broker frozen past its session timeout was
    fenced by its controller, and leads nothing until it registers again."""
    admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{KAFKA_PORT}")
    try:
        wait_until(
            lambda: all(p["leader_id"] >= 0 for p in admin.describe_topics([topic])[0]["partitions"]),
            timeout=60,
            message=f"leaders for {topic}",
        )
    finally:
        admin.close()


@dataclass
class Answer:
    started: float
    elapsed: float
    path: str
    body: dict
    headers: dict
    status: int
    json: dict
    response_headers: dict


class Load:
    """Producers posting to the front door from threads until stopped; every answer with its timing."""

    def __init__(self, server, key: str, make, threads: int = 4):
        self._server, self._key, self._make = server, key, make
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._numbers = itertools.count()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            path, body, headers = self._make(next(self._numbers))
            started = time.monotonic()
            response = session.post(
                self._server.url + path,
                json=body,
                timeout=30,
                headers={"Authorization": f"Bearer {self._key}", **headers},
            )
            self.answers.append(
                Answer(
                    started,
                    time.monotonic() - started,
                    path,
                    body,
                    headers,
                    response.status_code,
                    response.json(),
                    dict(response.headers),
                )
            )
            time.sleep(0.01)

    def ok_count(self) -> int:
        return sum(a.status == 200 for a in list(self.answers))

    def recovered(self, since: float, count: int = 20) -> bool:
        """The last `count` answers to requests sent after `since` were all 200."""
        after = [a for a in list(self.answers) if a.started >= since]
        return len(after) >= count and all(a.status == 200 for a in after[-count:])


def events_of(marker: str) -> dict:
    return {
        "event": "paywall_viewed",
        "anonymous_id": f"dev-{marker}",
        "timestamp": "2024-03-15T14:22:00Z",
        "properties": {"m": marker},
    }


def ids_by_marker(bootstrap: str, topic: str, workspace: str) -> dict[str, set[str]]:
    """The event ids in `topic` of each marker of `workspace` (a record holds the events of several
    requests)."""
    ids: dict[str, set[str]] = {}
    for _, _, value in read_topic(bootstrap, topic):
        for event in envelope.decode(value).documents():
            if event["workspace"] == workspace:
                ids.setdefault(event["properties"]["m"], set()).add(event["event_id"])
    return ids


def assert_bounded_503s(answers: list[Answer]) -> None:
    for a in answers:
        assert a.elapsed <= BOUND, f"answered after {a.elapsed:.1f} s: {a.status} {a.json}"
        assert a.status in (200, 503), (a.status, a.json)
        if a.status == 503:
            assert a.json["error"] == "queue_unavailable" and a.json["message"] in (NOT_QUEUED, MAY_ARRIVE)
            assert int(a.response_headers["Retry-After"]) > 0


@pytest.fixture(scope="module")
def env(production_env):
    return {**production_env, "FLOKIT_ENQUEUE_TIMEOUT_SECONDS": str(TIMEOUT)}


def test_the_front_door_heals_after_a_broker_restart_under_load(env, workspace_key):
    # kafka-python's idempotent producer broke for good when a batch it had retried expired during the outage
    # (deploy/queue/kafka_queue.py says how): every request then waited for the timeout and got a 503, until
    # the front door was restarted, while /readyz answered 200.
    _, key = workspace_key(rate_limit_per_minute=1_000_000)

    def batch(n):
        return ("/v1/batch/events", {"events": [events_of(f"r{n}-{i}") for i in range(50)]}, {})

    with api_server(env, workers=2) as server, Load(server, key, batch) as load:
        wait_until(lambda: load.ok_count() >= 20, timeout=30, message="a loaded front door")
        with broker_stopped(env["FLOKIT_TOPIC"]):
            time.sleep(OUTAGE)
            assert requests.get(server.url + "/readyz", timeout=15).status_code == 503
        back = time.monotonic()  # the broker answers again
        wait_until(lambda: load.recovered(since=back), timeout=30, message="200s again after the restart")
        assert requests.get(server.url + "/readyz", timeout=15).status_code == 200
    assert any(a.status == 503 for a in load.answers)
    assert_bounded_503s(load.answers)


def test_a_frozen_broker_is_not_ready_and_idempotent_retries_are_exact(env, workspace_key, kafka_bootstrap):
    workspace, key = workspace_key(rate_limit_per_minute=1_000_000)
    run = uuid.uuid4().hex[:8]

    def request(n: int):
        if n % 2:  # a batch with an Idempotency-Key
            return (
                "/v1/batch/events",
                {"events": [events_of(f"{run}-k{n}-{i}") for i in range(5)]},
                {"Idempotency-Key": f"{run}-{n}"},
            )
        return "/v1/events", events_of(f"{run}-s{n}"), {}

    with api_server(env, workers=1) as server:
        with Load(server, key, request) as load:
            wait_until(lambda: load.ok_count() >= 20, timeout=30, message="a loaded front door")
            with broker_frozen(env["FLOKIT_TOPIC"]):
                time.sleep(2 * TIMEOUT)  # the publishes in flight have failed by now
                started = time.monotonic()
                ready = requests.get(server.url + "/readyz", timeout=15)
                # A frozen broker still accepts connections, and the topic's metadata was known: that answered
                # 200.
                assert ready.status_code == 503 and ready.json()["error"] == "queue_unavailable"
                assert time.monotonic() - started < 6
                time.sleep(max(0.0, OUTAGE - 2 * TIMEOUT - (time.monotonic() - started)))
            back = time.monotonic()
            wait_until(lambda: load.recovered(since=back), timeout=30, message="200s again after the thaw")
        assert requests.get(server.url + "/readyz", timeout=15).status_code == 200
        assert_bounded_503s(load.answers)

        # Every keyed request that got a 503, retried with its key until it gets a 200.
        failed = [a for a in load.answers if a.status == 503 and a.headers]
        assert failed, "no keyed request got a 503 while the broker was frozen"
        final = {a.headers["Idempotency-Key"]: a.json for a in load.answers if a.status == 200 and a.headers}
        for a in failed:
            deadline = time.monotonic() + 60
            while (retry := server.post(a.path, a.body, key=key, headers=a.headers)).status_code != 200:
                assert retry.status_code in (409, 503) and time.monotonic() < deadline, retry.text
                time.sleep(0.5)
            final[a.headers["Idempotency-Key"]] = retry.json()

    by_marker = ids_by_marker(kafka_bootstrap, env["FLOKIT_TOPIC"], workspace)
    # Exact: each event of a keyed request is in the topic under the one id its 200 gave, whatever copies its
    # failed attempts left (the retry reused their ids: consumers keep one).
    for idempotency_key, answer in final.items():
        n = int(idempotency_key.rsplit("-", 1)[1])
        for i, event_id in enumerate(answer["event_ids"]):
            assert by_marker[f"{run}-k{n}-{i}"] == {event_id}
    # A single event that got a 200 is there under its id; one whose 503 said none was queued is not there.
    for a in load.answers:
        if not a.headers and a.status == 200:
            assert by_marker[a.body["properties"]["m"]] == {a.json["event_id"]}
        if not a.headers and a.status == 503 and a.json["message"] == NOT_QUEUED:
            assert a.body["properties"]["m"] not in by_marker


def test_a_request_still_waiting_for_the_queue_at_its_deadline_is_withdrawn(kafka_bootstrap, topic):
    # Requests queue up behind the publish in flight (one per worker, ingest_api.enqueue). One whose deadline
    # passes before a publish takes it is withdrawn: its 503 says none of its events was queued, and none is.
    enqueuer = Enqueuer(KafkaPublisher(kafka_bootstrap, topic, TIMEOUT), TIMEOUT)
    workspace = f"ws-{uuid.uuid4().hex[:8]}"

    def publish(marker, deadline=None):
        return enqueuer.publish(
            workspace,
            "2026-11-27T10:00:00.000Z",
            [{"event_id": f"evt_{marker}", **events_of(marker)}],
            deadline,
        )

    publish("before")
    with broker_frozen(topic):
        held = threading.Thread(target=lambda: pytest.raises(ServiceUnavailable, publish, "in-flight"))
        held.start()
        time.sleep(0.3)  # its publish holds the worker's publisher, waiting for the frozen broker
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as raised:
            publish("withdrawn", started + 0.5)
        assert raised.value.message == NOT_QUEUED and time.monotonic() - started < 1.5
        held.join(2 * BOUND)
    wait_until(lambda: _published(publish, "after"), timeout=30, message="a publish after the thaw")
    markers = ids_by_marker(kafka_bootstrap, topic, workspace)
    assert {"before", "after"} <= set(markers) and "withdrawn" not in markers


def _published(publish, marker: str) -> bool:
    try:
        publish(marker)
        return True
    except ServiceUnavailable:
        return False
