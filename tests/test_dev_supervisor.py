"""`flokit dev` killed with kill -9 (its own process, or its process group) under load: every part it started
(warehouse, consumer, gunicorn and gunicorn's workers) exits within seconds, and the next `flokit dev` on the
same data dir starts cleanly and has every acknowledged event, once."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from deploy.clickhouse import connect
from deploy.settings import Settings

from .dev_process import DevProcess, descendants, processes_using
from .faults import LoadGenerator, count_in_warehouse
from .services import ROOT

GONE_WITHIN_SECONDS = 10


def commands(pids: list[int]) -> list[str]:
    return [
        f"{pid}: " + open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:100]
        for pid in pids
        if os.path.exists(f"/proc/{pid}")
    ]


@pytest.mark.parametrize("kill", ["supervisor", "process group"])
def test_kill_9_of_flokit_dev_ends_every_part_and_the_next_one_starts_clean(tmp_path, kill):
    data = tmp_path / "data"
    env = {
        **os.environ,
        "FLOKIT_DATA_DIR": str(data),
        "FLOKIT_API_WORKERS": "2",
        "FLOKIT_RATE_LIMIT_PER_MINUTE": "1000000",
    }
    for name in ("FLOKIT_KAFKA_BOOTSTRAP", "FLOKIT_REDIS_URL", "FLOKIT_CLICKHOUSE_URL"):
        env.pop(name, None)
    command = [sys.executable, "-m", "deploy.cli", "dev"]
    dev = DevProcess(command, cwd=ROOT, env=env)
    key = dev.wait_ready()
    parts = descendants(dev.proc.pid)
    assert len(parts) >= 5, parts  # warehouse, consumer, gunicorn with 2 workers (and what runs them)
    load = LoadGenerator(dev.url, key).start()
    try:
        load.wait_for_acknowledged(1_000)  # keep-alive connections busy, a batch in the consumer's hands
        if kill == "supervisor":
            os.kill(dev.proc.pid, signal.SIGKILL)
        else:
            os.killpg(
                dev.proc.pid, signal.SIGKILL
            )  # its session and group: what a terminal's kill would reach
        killed_at = time.monotonic()
        dev.proc.wait(10)
        while (left := processes_using(data)) and time.monotonic() - killed_at < GONE_WITHIN_SECONDS:
            time.sleep(0.2)
        gone_after = time.monotonic() - killed_at
        assert not left, f"still running {gone_after:.0f} s after the kill: {commands(left)}"
        assert not set(parts) & set(processes_using(data))
    finally:
        load.stop(drain_seconds=1)  # nothing answers now: what is in hand is abandoned (unacknowledged)
    again = DevProcess(command, cwd=ROOT, env=env, api_port=dev.api_port, warehouse_port=dev.warehouse_port)
    assert again.wait_ready() == key
    try:
        settings = Settings.from_env({"FLOKIT_CLICKHOUSE_URL": f"http://127.0.0.1:{again.warehouse_port}"})
        tally = count_in_warehouse(connect(settings), settings.clickhouse_database, "dev", load)
    finally:
        assert again.interrupt() == 0, "".join(again.output)
    print(f"every part gone {gone_after:.1f} s after the kill; {load.summary()}; {tally}")
    tally.assert_exact()
