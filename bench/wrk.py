"""Closed-loop saturation runs with wrk (Debian's `wrk`, /usr/bin/wrk) and bench/bodies.lua.

wrk is C with an epoll loop: one thread drives thousands of requests per second for a few percent of a core,
which matters on a 2-core machine where the generator shares the CPUs with the system under test. Its CPU
time is measured (utime+stime) and reported with every run.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

LUA = Path(__file__).with_name("bodies.lua")


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    path: str,
    bodies: str,
    key: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    max_requests: int = 0,
    timeout_s: int = 10,
) -> dict:
    """One wrk run against `url` + `path` (a 127.0.0.1 URL), bounded by `seconds` and, per wrk thread, by
    `max_requests` responses. Returns wrk's figures plus the generator's CPU seconds."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"load is only ever sent to 127.0.0.1, not {url}")
    env = {
        **os.environ,
        "BENCH_BODIES": bodies,
        "BENCH_PATH": path,
        "BENCH_KEY": key,
        "BENCH_MAX_REQUESTS": str(max_requests),
    }
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA),
        url + path,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    result = json.loads(line.split(" ", 1)[1])
    seconds_run = result["duration_us"] / 1e6
    result.update(
        {
            "tool": "wrk",
            "connections": connections,
            "threads": threads,
            "seconds": round(seconds_run, 3),
            "requests_per_s": round(result["ok"] / seconds_run, 1) if seconds_run else 0.0,
            "generator_cpu_s": round(
                (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 3
            ),
        }
    )
    result["generator_cpu_share"] = round(result["generator_cpu_s"] / seconds_run, 3) if seconds_run else None
    return result
