"""The benchmark's own HTTP load generator, `bench/loadgen.c`, built and run from here:

    python -m bench.loadgen --url http://127.0.0.1:PORT --path /v1/events --bodies FILE --key KEY \
        (--open-rate R | --closed) --conns C --seconds S [--max-requests N]

Why it exists beside wrk: Debian packages wrk, not wrk2, so there is no fixed-rate (open-loop) mode, and
wrk cannot report progress while it runs (the end-to-end phase samples accepted events every second).

* open loop (`--open-rate R`): request i is due at t0 + i/R whatever happened before; it goes out on an idle
  keep-alive connection, or waits for one. Latency is measured from the moment it was DUE, not sent, so a
  slow server cannot hide its queueing by slowing the generator down (no coordinated omission).
* closed loop (`--closed`): each connection sends its next request as soon as the previous one is answered.
* `--warmup`: one request on every connection, all answered, before the clock starts; not counted. The
  open-loop latency phases use it, so that they measure a server holding its clients' connections, not one
  accepting a few hundred connections opened in the same millisecond (bench/README.md).

It is C (one epoll loop that wakes when the next request is due, requests pre-formatted) because it shares the
two cores with what it measures: the asyncio generator it replaced took 0.29-0.38 of a core at 3,000
requests/s (bench/README.md). The binary is built with the system's C compiler on first use, into a cache
directory named by the source's hash. Bounded by --seconds and --max-requests; targets only 127.0.0.1.
Progress lines (`BENCH_PROGRESS {...}`, CLOCK_MONOTONIC seconds) go to stdout every 0.25 s, the result
(`BENCH_RESULT {...}`) last.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "loadgen.c"


def binary() -> Path:
    """The built generator: compiled once per version of its source (cc -O2), reused after."""
    source = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flokit-bench"
    path = cache / f"loadgen-{hashlib.sha256(source).hexdigest()[:16]}"
    if path.exists():
        return path
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("bench.loadgen needs a C compiler (cc or gcc; Debian: apt-get install gcc)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, then renamed: concurrent runs are safe
        out = Path(tmp) / "loadgen"
        done = subprocess.run(
            [cc, "-O2", "-Wall", "-o", str(out), str(SOURCE)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"bench.loadgen: building {SOURCE} failed:\n{done.stderr[-3000:]}")
        os.replace(out, path)
    return path


def spawn(
    url: str,
    path: str,
    bodies: str,
    key: str,
    *,
    seconds: float,
    conns: int,
    open_rate: float | None = None,
    max_requests: int = 0,
    on_progress=None,
    drain_seconds: float = 15.0,
    warmup: bool = False,
) -> dict:
    """Run the generator in its own process; `on_progress(dict)` is called for each progress line. `warmup`:
    one request on every connection, answered, before the clock starts (not counted: the run measures the
    server holding every connection, not accepting them)."""
    cmd = [
        str(binary()),
        "--url",
        url,
        "--path",
        path,
        "--bodies",
        bodies,
        "--key",
        key,
        "--conns",
        str(conns),
        "--seconds",
        str(seconds),
        "--max-requests",
        str(max_requests),
        "--drain-seconds",
        str(drain_seconds),
    ]
    cmd += ["--closed"] if open_rate is None else ["--open-rate", str(open_rate)]
    cmd += ["--warmup"] if warmup else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = None
    try:
        for line in proc.stdout:
            if line.startswith("BENCH_PROGRESS ") and on_progress is not None:
                on_progress(json.loads(line.split(" ", 1)[1]))
            elif line.startswith("BENCH_RESULT "):
                result = json.loads(line.split(" ", 1)[1])
        proc.wait(timeout=seconds + drain_seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {proc.stderr.read()[-3000:]}")
    proc.stderr.close()
    return result


def main(argv=None) -> int:
    """Run the generator with these arguments (see the module's doc), in the foreground."""
    return subprocess.call([str(binary()), *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
