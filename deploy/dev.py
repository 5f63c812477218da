"""`flokit dev`: the whole pipeline on one machine, nothing to install.

Starts, in order, the embedded warehouse (unless FLOKIT_CLICKHOUSE_URL names a
ClickHouse server), creates the Kafka topics if FLOKIT_KAFKA_BOOTSTRAP names
brokers, migrates the warehouse, makes sure a development key exists, then a
consumer and the front door; prints the URL, the key and a curl command; and
on Ctrl-C or SIGTERM stops them in the reverse order — front door first (no
new events), then the consumer (writes and commits what it holds), then the
warehouse — so nothing that got a 200 is lost. Everything lives under
FLOKIT_DATA_DIR; running it again continues where it stopped.

Each part is a process of its own (`flokit warehouse`, `flokit consumer`,
`flokit api`), in its own process group so a terminal's Ctrl-C reaches only
this supervisor, which then stops them in order. Should the supervisor die,
the kernel sends its children SIGTERM (PR_SET_PDEATHSIG).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import components
from .settings import Settings

DEV_WORKSPACE = "dev"
KEY_FILE = "dev-api-key"
STOP_TIMEOUT_SECONDS = 60


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Part:
    """One child process of the pipeline."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"flokit dev: {self.name} did not stop in {STOP_TIMEOUT_SECONDS} s; killing it", file=sys.stderr)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _wait_until(condition, part: Part, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if not part.alive():
            raise RuntimeError(f"{part.name} exited while {what}:\n{part.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{part.name} not {what} after {timeout:.0f} s:\n{part.tail()}")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def dev_key(settings: Settings) -> str:
    """The development key, kept in plain text under the data directory (a
    development convenience only: production keys exist once, when issued)."""
    state = components.make_state(settings)
    path = settings.data_dir / KEY_FILE
    if path.exists():
        key = path.read_text().strip()
        if state.authenticate(key) is not None:
            return key
    key = state.create_key(DEV_WORKSPACE)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def banner(settings: Settings, key: str) -> str:
    api = f"http://{settings.api_bind}"
    return f"""
FloKit Ingest is running (data in {settings.data_dir.resolve()}).

  API        {api}          (OpenAPI: {api}/v1/openapi.json)
  warehouse  {settings.warehouse_url}   (clickhouse-connect, or: flokit sql "SELECT …")
  API key    {key}

Send an event:

  export FLOKIT_API_KEY={key}
  curl -X POST {api}/v1/events \\
    -H "Authorization: Bearer $FLOKIT_API_KEY" \\
    -H "Content-Type: application/json" \\
    -d '{{
      "event": "paywall_viewed",
      "user_id": "usr_abc123",
      "timestamp": "2024-03-15T14:22:00Z",
      "properties": {{
        "paywall_id": "pw_annual_v3",
        "offer_id": "offer_intro_50pct",
        "plan_ids": ["plan_annual_usd", "plan_monthly_usd"],
        "context": "onboarding_step_3"
      }}
    }}'

Then look at it:  flokit sql "SELECT event, user_id, timestamp FROM events_resolved ORDER BY timestamp"
Logs: {settings.data_dir.resolve() / 'logs'}/.  Ctrl-C stops everything, in order, losing nothing.
"""


def run(settings: Settings) -> int:
    from .clickhouse import migrate

    settings = settings.with_(data_dir=settings.data_dir.resolve())
    log_dir = settings.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLOKIT_DATA_DIR": str(settings.data_dir)}
    parts: list[Part] = []
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    try:
        if settings.embedded_warehouse:
            parts.append(Part("warehouse", ["deploy.cli", "warehouse"], env, log_dir))
            _wait_until(lambda: _answers(settings.warehouse_url + "/ping"), parts[-1], "answering")
        if not settings.embedded_queue:
            from .queue.kafka_queue import create_topics
            create_topics(settings.kafka_bootstrap, {settings.topic: settings.partitions,
                                                     settings.dlq_topic: settings.partitions},
                          settings.replication_factor)
        applied = migrate(settings)
        if applied:
            print(f"flokit dev: applied migrations {', '.join(applied)}")
        key = dev_key(settings)
        parts.append(Part("consumer", ["deploy.cli", "consumer"], env, log_dir))
        parts.append(Part("api", ["deploy.cli", "api"], env, log_dir))
        _wait_until(lambda: _answers(f"http://{settings.api_bind}/readyz"), parts[-1], "ready")
        print(banner(settings, key), flush=True)
        while not stopping:
            dead = next((p for p in parts if not p.alive()), None)
            if dead:
                raise RuntimeError(f"{dead.name} exited unexpectedly:\n{dead.tail()}")
            time.sleep(0.2)
        print("flokit dev: stopping (front door, then consumer, then warehouse)…", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"flokit dev: {exc}", file=sys.stderr)
        return 1
    finally:
        for part in reversed(parts):
            code = part.stop()
            if code not in (0, -signal.SIGTERM):
                print(f"flokit dev: {part.name} exited with {code}; see {part.log_path}", file=sys.stderr)
