"""`flokit dev` as a subprocess: start it, read what it prints, kill its whole tree."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from .services import free_port

_KEY = re.compile(r"API key\s+(fk_\S+)")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first found, then theirs), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class DevProcess:
    def __init__(
        self,
        command: list[str],
        cwd: Path,
        env: dict[str, str],
        *,
        api_port: int | None = None,
        warehouse_port: int | None = None,
    ):
        """`api_port`, `warehouse_port`: default free ones (pass an earlier run's to start again on them)."""
        self.api_port, self.warehouse_port = api_port or free_port(), warehouse_port or free_port()
        self.env = {
            **env,
            "FLOKIT_API_BIND": f"127.0.0.1:{self.api_port}",
            "FLOKIT_WAREHOUSE_BIND": f"127.0.0.1:{self.warehouse_port}",
        }
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []

    def wait_ready(self, timeout: float = 180) -> str:
        """Read the banner; returns the API key it prints."""
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.output.append(line)
            if found := _KEY.search(line):
                # Read up to the end of the banner so the pipe never fills.
                for rest in self.proc.stdout:
                    self.output.append(rest)
                    if rest.startswith("Logs:"):
                        return found.group(1)
            if time.monotonic() > deadline:
                break
        raise RuntimeError("flokit dev did not print its banner:\n" + "".join(self.output))

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C, as a person would press it."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        self.output.extend(self.proc.stdout.readlines())
        return code

    def kill_tree(self) -> None:
        """kill -9 the supervisor and every process below it, all at once."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)
        for pid in pids:  # reap-free wait: the grandchildren are not ours
            deadline = time.monotonic() + 30
            while (
                Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) and time.monotonic() < deadline
            ):
                time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]).lower()
    except (OSError, IndexError):
        return "zombie"


def processes_using(data_dir: Path) -> list[int]:
    """Every live process (zombies aside) whose command line or environment names `data_dir`, from /proc."""
    needle = str(data_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                if "zombie" not in _state(int(entry.name)):
                    found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return found
