"""The benchmark's own HTTP load generator, run as a separate process:

    python -m bench.loadgen --url http://127.0.0.1:PORT --path /v1/events --bodies FILE --key KEY \
        (--open-rate R | --closed) --conns C --seconds S [--max-requests N]

Why it exists beside wrk: Debian packages wrk, not wrk2, so there is no fixed-rate (open-loop) mode, and
wrk cannot report progress while it runs (the end-to-end phase samples accepted events every second).

* open loop (`--open-rate R`): request i is due at t0 + i/R whatever happened before; it goes out on an idle
  keep-alive connection, or waits for one. Latency is measured from the moment it was DUE, not sent, so a
  slow server cannot hide its queueing by slowing the generator down (no coordinated omission).
* closed loop (`--closed`): each connection sends its next request as soon as the previous one is answered.

A raw asyncio Protocol per connection (HTTP/1.1 keep-alive, Content-Length bodies, requests pre-formatted),
so a request costs the generator a few microseconds of Python. Bounded by --seconds and --max-requests;
targets only 127.0.0.1. Progress lines (`BENCH_PROGRESS {...}`, CLOCK_MONOTONIC seconds) go to stdout every
0.25 s, the result (`BENCH_RESULT {...}`) last.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time
from array import array
from collections import deque

_ACCEPTED = re.compile(rb'"accepted":(\d+)')


class Conn(asyncio.Protocol):
    def __init__(self, gen: "Generator"):
        self.gen = gen
        self.transport = None
        self.buf = bytearray()
        self.due = 0.0  # when the request in flight was due (open loop) or sent (closed loop)
        self.sent = 0.0
        self.busy = False
        self.lost = False

    def connection_made(self, transport):
        self.transport = transport

    def send(self, request: bytes, due: float) -> None:
        self.busy = True
        self.due = due
        self.sent = time.monotonic()
        self.transport.write(request)

    def data_received(self, data):
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            status = int(buf[9:12])
            at = head.find(b"content-length:")
            if at < 0:
                self.gen.protocol_error("response without Content-Length")
                self.transport.close()
                return
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15:eol if eol > 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4:total])
            del buf[:total]
            self.busy = False
            self.gen.completed(self, status, body, b"connection: close" in head)

    def connection_lost(self, exc):
        self.lost = True
        if self.busy:
            self.busy = False
            self.gen.failed(self)


class Generator:
    def __init__(self, args):
        self.args = args
        self.host, self.port = args.url.removeprefix("http://").split(":")
        if self.host != "127.0.0.1":
            raise SystemExit("loadgen: load is only ever sent to 127.0.0.1")
        self.port = int(self.port)
        headers = (f"POST {args.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                   f"Authorization: Bearer {args.key}\r\nContent-Type: application/json\r\n")
        with open(args.bodies, "rb") as f:
            self.requests = [headers.encode() + b"Content-Length: %d\r\n\r\n" % len(line) + line
                             for line in (ln.rstrip(b"\n") for ln in f) if line]
        self.batch = args.path.endswith("/batch/events")
        self.latency = array("d")  # from due (open loop) / sent (closed loop) to the last byte, seconds
        self.service = array("d")  # from sent to the last byte
        self.ok = 0
        self.events = 0
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.protocol_errors: list[str] = []
        self.next_body = 0
        self.sent = 0
        self.idle: deque[Conn] = deque()
        self.pending: deque[float] = deque()
        self.conns: list[Conn] = []
        self.stop_sending = False
        self.outstanding = 0
        self.late_dispatch = 0
        self.done = asyncio.Event()

    def request(self) -> bytes:
        self.next_body = (self.next_body + 1) % len(self.requests)
        return self.requests[self.next_body]

    async def connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Conn(self), self.host, self.port)
        self.conns.append(conn)
        return conn

    def completed(self, conn: Conn, status: int, body: bytes, close: bool) -> None:
        now = time.monotonic()
        self.outstanding -= 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.ok += 1
            if self.batch:
                m = _ACCEPTED.search(body, 0, 200)
                self.events += int(m.group(1)) if m else 0
            else:
                self.events += 1
            self.latency.append(now - conn.due)
            self.service.append(now - conn.sent)
        if close:
            conn.transport.close()
            asyncio.get_running_loop().create_task(self.replace(conn))
            return
        self.next_for(conn)

    def failed(self, conn: Conn) -> None:
        self.outstanding -= 1
        self.errors += 1
        asyncio.get_running_loop().create_task(self.replace(conn))

    def protocol_error(self, what: str) -> None:
        if len(self.protocol_errors) < 5:
            self.protocol_errors.append(what)

    async def replace(self, conn: Conn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        try:
            fresh = await self.connect()
        except OSError:
            self.errors += 1
            return
        self.next_for(fresh)

    def next_for(self, conn: Conn) -> None:
        """Give an idle connection its next request, if there is one."""
        if self.args.closed:
            if not self.stop_sending and self.under_cap():
                self.sent += 1
                self.outstanding += 1
                conn.send(self.request(), time.monotonic())
            elif self.outstanding == 0:
                self.done.set()
            return
        if self.pending:
            self.outstanding += 1
            conn.send(self.request(), self.pending.popleft())
        else:
            self.idle.append(conn)
            if self.stop_sending and self.outstanding == 0:
                self.done.set()

    def under_cap(self) -> bool:
        return not self.args.max_requests or self.sent < self.args.max_requests

    def dispatch(self, due: float) -> None:
        self.sent += 1
        while self.idle:
            conn = self.idle.popleft()
            if not conn.lost:
                self.outstanding += 1
                conn.send(self.request(), due)
                return
        self.pending.append(due)

    async def progress(self, t0: float) -> None:
        while not self.done.is_set():
            print("BENCH_PROGRESS " + json.dumps({"t": time.monotonic(), "ok": self.ok, "events": self.events,
                                                   "non200": sum(v for k, v in self.statuses.items() if k != 200),
                                                   "errors": self.errors}), flush=True)
            await asyncio.sleep(0.25)

    async def run(self) -> dict:
        args = self.args
        for _ in range(args.conns):
            await self.connect()
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        progress = asyncio.get_running_loop().create_task(self.progress(t0))
        if args.closed:
            for conn in list(self.conns):
                self.next_for(conn)
            while time.monotonic() < deadline and not self.done.is_set():
                await asyncio.sleep(0.05)
            self.stop_sending = True
        else:
            self.idle.extend(self.conns)
            interval = 1.0 / args.open_rate
            total = int(args.seconds * args.open_rate)
            if args.max_requests:
                total = min(total, args.max_requests)
            i = 0
            while i < total:
                now = time.monotonic()
                due = t0 + i * interval
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                if now - due > 0.002:
                    self.late_dispatch += 1
                self.dispatch(due)
                i += 1
            self.stop_sending = True
        end_sending = time.monotonic()
        if self.outstanding > 0 or self.pending:
            try:
                await asyncio.wait_for(self.done.wait(), timeout=args.drain_seconds)
            except asyncio.TimeoutError:
                pass
        elapsed_sending = end_sending - t0
        elapsed = time.monotonic() - t0
        self.done.set()
        await progress
        for conn in self.conns:
            conn.transport.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lat = sorted(self.latency)
        svc = sorted(self.service)
        return {
            "tool": "bench.loadgen", "mode": "closed" if args.closed else "open",
            "offered_rate": None if args.closed else args.open_rate, "connections": args.conns,
            "sent": self.sent, "ok": self.ok, "events": self.events,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "errors": self.errors,
            "unanswered": self.outstanding + len(self.pending), "protocol_errors": self.protocol_errors,
            "seconds_sending": round(elapsed_sending, 3), "seconds": round(elapsed, 3),
            "requests_per_s": round(self.ok / elapsed_sending, 1) if elapsed_sending else 0.0,
            "events_per_s": round(self.events / elapsed_sending, 1) if elapsed_sending else 0.0,
            "late_dispatch": self.late_dispatch,
            "latency_ms": _percentiles(lat), "service_ms": _percentiles(svc),
            "generator_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "generator_cpu_share": round((usage.ru_utime + usage.ru_stime) / elapsed, 3) if elapsed else None,
        }


def _percentiles(sorted_values) -> dict:
    if not sorted_values:
        return {}
    n = len(sorted_values)

    def q(p):
        return round(sorted_values[min(n - 1, int(p * n))] * 1000, 3)

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p999": q(0.999), "max": round(sorted_values[-1] * 1000, 3),
            "mean": round(sum(sorted_values) / n * 1000, 3), "n": n}


def spawn(url: str, path: str, bodies: str, key: str, *, seconds: float, conns: int, open_rate: float | None = None,
          max_requests: int = 0, on_progress=None, drain_seconds: float = 15.0) -> dict:
    """Run the generator in its own process; `on_progress(dict)` is called for each progress line."""
    import subprocess

    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--path", path, "--bodies", bodies, "--key", key,
           "--conns", str(conns), "--seconds", str(seconds), "--max-requests", str(max_requests),
           "--drain-seconds", str(drain_seconds)]
    cmd += ["--closed"] if open_rate is None else ["--open-rate", str(open_rate)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
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
    p = argparse.ArgumentParser(prog="python -m bench.loadgen")
    p.add_argument("--url", required=True)
    p.add_argument("--path", default="/v1/events")
    p.add_argument("--bodies", required=True)
    p.add_argument("--key", default="")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--open-rate", type=float)
    mode.add_argument("--closed", action="store_true")
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--max-requests", type=int, default=0)
    p.add_argument("--drain-seconds", type=float, default=15.0)
    args = p.parse_args(argv)
    if args.seconds > 600:
        raise SystemExit("loadgen: --seconds is at most 600")
    result = asyncio.run(Generator(args).run())
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
