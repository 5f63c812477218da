"""Run the real warehouse server (`python -m deploy.warehouse_server`) as a subprocess for tests.

proc, url = start_warehouse(tmp_path)   # url like "http://127.0.0.1:41234"
...
assert stop_warehouse(proc) == 0
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_READY = re.compile(r"warehouse listening on (http://\S+)")


def start_warehouse(
    data_dir: str | os.PathLike, timeout: float = 60.0, port: int = 0
) -> tuple[subprocess.Popen, str]:
    """Start a warehouse on `data_dir` bound to `port` (default: a free loopback port); returns (process,
    base url) once it has printed its ready line. A server that exits or stays silent is an error, never a
    skip."""
    env = {**os.environ, "FLOKIT_DATA_DIR": str(data_dir), "FLOKIT_WAREHOUSE_BIND": f"127.0.0.1:{port}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.warehouse_server"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"warehouse on {data_dir} printed no ready line within {timeout}s")
        readable, _, _ = select.select([proc.stdout], [], [], remaining)
        line = proc.stdout.readline() if readable else ""
        if readable and not line:
            raise RuntimeError(f"warehouse on {data_dir} exited with {proc.wait()} before it was ready")
        found = _READY.search(line)
        if found:
            return proc, found.group(1)


def stop_warehouse(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM the warehouse and wait for it; returns its exit status (0 for a clean shutdown)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"warehouse did not exit within {timeout}s of SIGTERM") from None
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


class Warehouse:
    """A warehouse process that a test can kill and start again on the same data dir and port."""

    def __init__(self, data_dir: str | os.PathLike):
        self.data_dir = data_dir
        self.proc, self.url = start_warehouse(data_dir)
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """kill -9: no clean shutdown of the engine."""
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def start_again(self) -> None:
        self.proc, _ = start_warehouse(self.data_dir, port=self.port)

    def stop(self) -> int:
        return stop_warehouse(self.proc)
