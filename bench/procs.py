"""Starting, watching and stopping the processes of a benchmark run, and reading what they cost.

Every process is started the way the project starts it (the same commands as deploy/dev.py and
tests/services.py: `python -m deploy.cli api|consumer`, `python -m deploy.warehouse_server`), on a free
loopback port, in its own session, and stopped by its own process group id. Memory is /proc/<pid>/status VmHWM
(peak resident set), CPU is utime+stime from /proc/<pid>/stat.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- /proc ------------------------------------------------------------------------------------------------


def status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    kb = status_kb(pid, "VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def rss_mb(pid: int) -> float | None:
    kb = status_kb(pid, "VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return sorted(out)


def kafka_broker_pid(port: int) -> int | None:
    pidfile = Path(f"/tmp/flokit-kafka-{port}/broker.pid")
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def dirty_kb() -> int:
    """The page cache's dirty data (written, not yet on disk), in kB."""
    line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("Dirty:"))
    return int(line.split()[1])


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


# --- processes ----------------------------------------------------------------------------------------------


class Proc:
    """One started process (and, for gunicorn, its workers)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path, *, stdout_pipe=False):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            text=stdout_pipe,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def pids(self) -> dict[str, int]:
        """The process and its direct children (gunicorn's workers), by role."""
        out = {self.name: self.pid}
        for i, child in enumerate(children(self.pid)):
            out[f"{self.name}.worker{i}"] = child
        return out

    def peak_rss(self) -> dict[str, float | None]:
        return {role: peak_rss_mb(pid) for role, pid in self.pids().items()}

    def cpu(self) -> dict[str, float | None]:
        return {role: cpu_seconds(pid) for role, pid in self.pids().items()}

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


def _wait_http(proc: Proc, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f} s:\n{proc.tail()}")


def start_warehouse(data_dir: Path, log_dir: Path, timeout: float = 90.0) -> tuple[Proc, str]:
    """`python -m deploy.warehouse_server` on a free port; returns it and its URL after its ready line."""
    env = {**os.environ, "FLOKIT_DATA_DIR": str(data_dir), "FLOKIT_WAREHOUSE_BIND": "127.0.0.1:0"}
    proc = Proc(
        "warehouse",
        [sys.executable, "-m", "deploy.warehouse_server"],
        env,
        log_dir / "warehouse.log",
        stdout_pipe=True,
    )
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.stop()
            raise RuntimeError("the warehouse printed no ready line in time")
        ready, _, _ = select.select([proc.proc.stdout], [], [], remaining)
        line = proc.proc.stdout.readline() if ready else ""
        if ready and not line:
            raise RuntimeError(f"the warehouse exited with {proc.proc.wait()}:\n{proc.tail()}")
        found = re.search(r"warehouse listening on (http://\S+)", line)
        if found:
            return proc, found.group(1)


def start_api(env: dict[str, str], log_dir: Path, name: str = "api") -> tuple[Proc, str]:
    """`flokit api` (gunicorn with deploy/gunicorn.conf.py) on a free port, once /readyz answers 200."""
    port = free_port()
    env = {**os.environ, **env, "FLOKIT_API_BIND": f"127.0.0.1:{port}"}
    proc = Proc(name, [sys.executable, "-m", "deploy.cli", "api"], env, log_dir / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    _wait_http(proc, url + "/readyz")
    _wait_workers(proc, int(env.get("FLOKIT_API_WORKERS") or len(os.sched_getaffinity(0))))
    return proc, url


def start_noop(
    env: dict[str, str], log_dir: Path, app: str = "bench.noop_app:app", name: str = "noop"
) -> tuple[Proc, str]:
    """The no-op WSGI app under gunicorn with deploy/gunicorn.conf.py's values
    (bench/noop_gunicorn.conf.py)."""
    port = free_port()
    env = {**os.environ, **env, "FLOKIT_API_BIND": f"127.0.0.1:{port}", "BENCH_NOOP_APP": app}
    conf = Path(__file__).with_name("noop_gunicorn.conf.py")
    proc = Proc(name, [sys.executable, "-m", "gunicorn", "-c", str(conf)], env, log_dir / f"{name}.log")
    url = f"http://127.0.0.1:{port}"
    _wait_http(proc, url + "/healthz")
    _wait_workers(proc, int(env.get("FLOKIT_API_WORKERS") or len(os.sched_getaffinity(0))))
    return proc, url


def _wait_workers(proc: Proc, workers: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(children(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)


def start_consumer(
    env: dict[str, str],
    log_dir: Path,
    name: str = "consumer",
    command: tuple[str, ...] = ("deploy.cli", "consumer"),
) -> Proc:
    env = {**os.environ, **env}
    return Proc(name, [sys.executable, "-m", *command], env, log_dir / f"{name}.log")
