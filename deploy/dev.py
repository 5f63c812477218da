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
`flokit api`), all in one process group apart from this supervisor's, so a
terminal's Ctrl-C reaches only the supervisor, which then stops them in order.

Should the supervisor die by any means (kill -9 included), the parts go too,
within GUARD_GRACE_SECONDS: the group's leader is a guard process (`python -m
deploy.dev`) reading a pipe whose other end only the supervisor holds; the
kernel closes that end when the supervisor is gone, and the guard ends the
whole group, gunicorn's workers included: SIGTERM, then SIGKILL. Nothing
acknowledged is lost that way (a 200 means the event is in the local log;
what the consumer had not committed is delivered again and deduped). The
kernel's own PR_SET_PDEATHSIG, used before, was not enough: it reaches only
the direct children, and with SIGTERM, which they take as a graceful stop:
under load gunicorn's workers went on serving their keep-alive clients until
its 30 s graceful timeout, and the consumer retried its batch against the
warehouse already gone for ~15 s, while a new `flokit dev` on the same data
dir may already be starting.
"""

from __future__ import annotations

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
GUARD_GRACE_SECONDS = 3.0


class Guard:
    """The leader of the parts' process group, ending the group once the supervisor is gone (see above)."""

    name = "guard"

    def __init__(self, env: dict[str, str], log_dir: Path):
        lifeline, self._lifeline = os.pipe()  # the write end is not inherited: only this process holds it
        self.log_path = log_dir / "guard.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deploy.dev"],
                env=env,
                stdin=lifeline,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        os.close(lifeline)

    @property
    def group(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def release(self) -> None:
        """After the parts stopped: the guard ends whatever is left of the group (nothing, normally) and
        exits."""
        os.close(self._lifeline)
        self.proc.wait(GUARD_GRACE_SECONDS + 10)


def guard() -> None:
    """The guard process: wait until the lifeline (stdin) closes, then end every process of its group."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the SIGTERM it sends its own group below, a stray Ctrl-C
    while os.read(0, 4096):
        pass
    group = os.getpgrp()
    if not _others_in_group(group):
        return
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + GUARD_GRACE_SECONDS
    while _others_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _others_in_group(group):
        os.killpg(group, signal.SIGKILL)  # this process too: its work is done


def _others_in_group(group: int) -> bool:
    """Whether a live process other than this one is in process group `group` (zombies are not)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


class Part:
    """One child process of the pipeline, in the guard's process group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path, group: int):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            process_group=group,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                print(
                    f"flokit dev: {self.name} did not stop in {STOP_TIMEOUT_SECONDS} s; killing it",
                    file=sys.stderr,
                )
                self.proc.kill()  # what it leaves behind (gunicorn's workers) the guard ends
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
Logs: {settings.data_dir.resolve() / "logs"}/.  Ctrl-C stops everything, in order, losing nothing.
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
    guard_process = Guard(env, log_dir)
    try:
        if settings.embedded_warehouse:
            parts.append(Part("warehouse", ["deploy.cli", "warehouse"], env, log_dir, guard_process.group))
            _wait_until(lambda: _answers(settings.warehouse_url + "/ping"), parts[-1], "answering")
        if not settings.embedded_queue:
            from .queue.kafka_queue import create_topics

            create_topics(
                settings.kafka_bootstrap,
                {settings.topic: settings.partitions, settings.dlq_topic: settings.partitions},
                settings.replication_factor,
            )
        applied = migrate(settings)
        if applied:
            print(f"flokit dev: applied migrations {', '.join(applied)}")
        key = dev_key(settings)
        parts.append(Part("consumer", ["deploy.cli", "consumer"], env, log_dir, guard_process.group))
        parts.append(Part("api", ["deploy.cli", "api"], env, log_dir, guard_process.group))
        _wait_until(lambda: _answers(f"http://{settings.api_bind}/readyz"), parts[-1], "ready")
        print(banner(settings, key), flush=True)
        while not stopping:
            watched: list[Guard | Part] = [guard_process, *parts]
            dead = next((p for p in watched if not p.alive()), None)
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
        guard_process.release()


if __name__ == "__main__":
    guard()
