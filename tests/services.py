"""Starting the real services the tests talk to, through the scripts in deploy/.

Every start waits until the service answers; a service that cannot start is a
test error, never a skip.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import orjson
import requests

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(script: str, action: str, **env: str) -> None:
    result = subprocess.run(
        ["bash", str(DEPLOY / script), action],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"deploy/{script} {action} failed:\n{result.stdout}\n{result.stderr}")


def delete_issued_topics(bootstrap: str) -> int:
    """Delete the topics named by this session's unique() names (and their `.dlq`); how many."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        ours = sorted(t for t in admin.list_topics() if t.removesuffix(".dlq") in ISSUED)
        for i in range(0, len(ours), 100):
            admin.delete_topics(ours[i : i + 100])
        return len(ours)
    finally:
        admin.close()


# Every name unique() gave out in this test session (conftest deletes the Kafka topics among them at the end).
ISSUED: set[str] = set()


def unique(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    ISSUED.add(name)
    return name


# The positions of the front door's two switches (deploy/gunicorn_worker.py) this test run asks for, which
# every ApiServer takes (.ci/run's second pass sets the stock ones: pywsgi, off); a switch not set: its
# default. A test of a property only one position provides sets that position in its own server's env (and
# tests/conftest.py skips it in a run that asks for the other).
SWITCHES = {
    name: os.environ[name]
    for name in ("FLOKIT_HTTP_PARSER", "FLOKIT_CONNECTION_BALANCE")
    if name in os.environ
}
HTTPTOOLS = {"FLOKIT_HTTP_PARSER": "httptools"}
BALANCE_ON = {"FLOKIT_CONNECTION_BALANCE": "on"}


class ApiServer:
    """`flokit api` (gunicorn with deploy/gunicorn.conf.py) in a subprocess."""

    def __init__(self, env: dict[str, str], workers: int = 2, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **SWITCHES,
            **env,
            "FLOKIT_API_BIND": f"127.0.0.1:{self.port}",
            "FLOKIT_API_WORKERS": str(workers),
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> ApiServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "api"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.proc.stdout.read().decode(errors='replace')}")
            try:
                if requests.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not answer /healthz within 60 s")

    def stop(self) -> str:
        if self.proc is None:
            return ""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        out = self.proc.stdout.read().decode(errors="replace")
        self.proc.stdout.close()
        self.proc = None
        return out

    def post(self, path: str, body=None, *, key: str | None = None, headers: dict | None = None, data=None):
        hdrs = {"Content-Type": "application/json"}
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        hdrs.update(headers or {})
        payload = data if data is not None else orjson.dumps(body)
        return requests.post(self.url + path, data=payload, headers=hdrs, timeout=30)


@contextmanager
def api_server(env: dict[str, str], workers: int = 2):
    server = ApiServer(env, workers).start()
    try:
        yield server
    finally:
        server.stop()


def read_topic(bootstrap: str, topic: str, idle_seconds: float = 2.0) -> list[tuple[int, int, bytes]]:
    """Every record now in `topic`, as (partition, offset, value), read from the start."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(idle_seconds * 1000),
    )
    try:
        return [(m.partition, m.offset, m.value) for m in consumer]
    finally:
        consumer.close()


def read_events(bootstrap: str, topic: str) -> list[dict]:
    """Every event in `topic`, flattened out of the envelopes, each with its envelope's fields."""
    from schemas import envelope

    events = []
    for partition, _offset, value in read_topic(bootstrap, topic):
        env = envelope.decode(value)
        for ref, event in zip(env.refs, env.documents(), strict=True):
            # Each event line carries its envelope's workspace and its own received_at (the envelope's is its
            # first event's: concurrent requests share records), and the header its ids.
            assert event.pop("workspace") == env.workspace
            received_at = event.pop("received_at")
            assert ref == (event["event_id"], event["anonymous_id"], event["user_id"], event["timestamp"])
            events.append(
                {**event, "_workspace": env.workspace, "_received_at": received_at, "_partition": partition}
            )
    return events


class ConsumerProcess:
    """`flokit consumer` (or another module's main, for fault injection) in a subprocess."""

    def __init__(
        self,
        env: dict[str, str],
        module: str = "deploy.cli",
        args: tuple[str, ...] = ("consumer",),
        log_path: Path | None = None,
    ):
        """`log_path`: write the output there instead of a pipe (a pipe nobody reads blocks a long-running
        consumer once it is full); wait() and stop() then return that file's text."""
        self._log = open(log_path, "ab") if log_path else None
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env={**os.environ, **env},
            cwd=ROOT,
            stdout=self._log or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.result: tuple[int, str] | None = None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 60) -> tuple[int, str]:
        """(exit status, output); waiting again returns the same."""
        if self.result is None:
            code = self.proc.wait(timeout=timeout)
            if self._log is not None:
                self._log.close()
                self.result = code, self.log_path.read_text(errors="replace")
            else:
                self.result = code, self.proc.stdout.read().decode(errors="replace")
                self.proc.stdout.close()
        return self.result

    def output(self) -> str:
        """What a consumer writing to `log_path` has written so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> tuple[int, str]:
        if self.result is not None:
            return self.result
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.wait(10)


def wait_until(condition, timeout: float = 60, interval: float = 0.25, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_lag(bootstrap: str, topic: str, group: str) -> int:
    """Messages of `topic` the consumer group has not committed yet (all of them if it never committed)."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        committed = admin.list_group_offsets(group).get(group, {})
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions)
        return sum(end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items())
    finally:
        consumer.close()
        admin.close()
