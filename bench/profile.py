"""`python -m bench.profile [--seconds N]`: where the time goes, per stage, with py-spy.

Starts the same deployment as `python -m bench` (warehouse, front door on Kafka + Redis, consumers) on fresh
topics, databases and ports, and samples with `py-spy record --gil --nonblocking` (only the thread holding the
GIL, i.e. the Python CPU time of the process; the target is never paused):

  batch     both gunicorn workers (--subprocesses on the master) while wrk saturates POST /v1/batch/events
  single    the same, for POST /v1/events
  consumer  the consumer draining a pre-filled Kafka topic into the warehouse
  consumer-local  the same consumer draining the embedded local log

Writes, under bench/results/profile-<timestamp>/, each stage's collapsed stacks (`<stage>.txt`, the input of
flamegraph.pl or speedscope), and `summary.json` / `summary.md`: the top functions by self and inclusive
samples and the samples per cost category (the innermost frame of each stack that belongs to a known layer).
Also prints the per-process CPU split (from /proc) of each stage. py-spy costs a few percent of a core itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench import limits, pipeline, procs, workload, wrk

RESULTS = Path(__file__).resolve().parent / "results"

# (substring of a frame's file, category), checked from the innermost frame outwards; first match wins.
CATEGORIES: list[tuple[str, str]] = [
    ("kafka/record/_crc32c", "Kafka client: CRC32C in pure Python"),
    ("kafka/record/", "Kafka client: record batch encode/decode"),
    ("kafka/", "Kafka client: other (I/O thread, futures, protocol)"),
    ("marshmallow/", "validation (marshmallow + schemas/events.py)"),
    ("schemas/events.py", "validation (marshmallow + schemas/events.py)"),
    ("ulid/", "event ids (ULID)"),
    ("ingest_api/ids.py", "event ids (ULID)"),
    ("redis/", "auth + rate limit (Redis round trips)"),
    ("ingest_api/state/", "auth + rate limit (Redis round trips)"),
    ("ingest_api/admission.py", "auth + rate limit (Redis round trips)"),
    ("schemas/envelope.py", "envelope encode/decode (orjson)"),
    ("ingest_api/body.py", "body read + JSON parse"),
    ("ingest_api/enqueue.py", "enqueue: grouping by partition"),
    ("clickhouse_connect/", "clickhouse-connect (Native serialisation, HTTP)"),
    ("schemas/warehouse.py", "row building (schemas.warehouse.event_row)"),
    ("consumer/identity.py", "identity lookups (consumer)"),
    ("consumer/", "consumer logic (decode, batch, dedupe, rows)"),
    ("deploy/queue/local_log", "local log (SQLite)"),
    ("deploy/queue/kafka_queue", "queue adapter (kafka_queue.py)"),
    ("ingest_api/", "front-door handlers (events.py, errors.py, …)"),
    ("deploy/http_handler", "HTTP server (httptools handler: environ, responses)"),
    ("werkzeug/", "Flask / Werkzeug (request, response, routing)"),
    ("flask/", "Flask / Werkzeug (request, response, routing)"),
    ("gunicorn/", "gunicorn (HTTP parsing, socket I/O)"),
    ("gevent/pywsgi.py", "HTTP server (gevent pywsgi: accepting, base environ)"),
    ("gevent/", "gevent (hub, greenlet switches, timeouts, socket wrappers)"),
    ("urllib3/", "urllib3 (HTTP client)"),
    ("requests/", "urllib3 (HTTP client)"),
    ("logging/", "logging"),
    ("threading.py", "threads, locks, queues (stdlib)"),
    ("queue.py", "threads, locks, queues (stdlib)"),
    ("selectors.py", "socket I/O, select (stdlib)"),
    ("socket.py", "socket I/O, select (stdlib)"),
    ("concurrent/", "threads, locks, queues (stdlib)"),
    ("json/", "stdlib json"),
]
# Whole-stack overrides, checked first: (function name anywhere in the stack, category).
CONTEXT: list[tuple[str, str]] = [
    ("_find_and_load", "imports (process start-up)"),
    ("resolve_links", "identity lookup query (resolve_links: parameter binding + SELECT)"),
]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarize(raw_path: Path, top: int = 25) -> dict:
    """Aggregate py-spy's raw (collapsed) output: `frame;frame;... count`, outermost first."""
    self_c, incl_c, cat_c = Counter(), Counter(), Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = []
        for f in stack.split(";"):
            m = _FRAME.match(f)
            if m:
                frames.append((m.group("func"), _short(m.group("file"))))
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        self_c[f"{leaf[0]} ({leaf[1]})"] += n
        for key in {f"{fn} ({fl})" for fn, fl in frames}:
            incl_c[key] += n
        names = {fn for fn, _ in frames}
        category = next((name for fn, name in CONTEXT if fn in names), None)
        for _fn, fl in [] if category else reversed(frames):
            for needle, name in CATEGORIES:
                if needle in fl:
                    category = name
                    break
            if category:
                break
        cat_c[category or f"other: {leaf[1]}"] += n

    def pct(c):
        return [(k, v, round(100 * v / total, 1)) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "categories": pct(cat_c), "self": pct(self_c), "inclusive": pct(incl_c)}


class PySpy:
    def __init__(
        self, pid: int, out: Path, *, subprocesses: bool = False, rate: int = 200, duration: int = 600
    ):
        if shutil.which("py-spy") is None:
            raise SystemExit("py-spy is not installed: pip install py-spy")
        cmd = [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--gil",
            "--nonblocking",
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--duration",
            str(duration),
        ]
        if subprocesses:
            cmd.append("--subprocesses")
        self.out = out
        self.log = open(out.with_suffix(".pyspy.log"), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=float, default=20, help="load per front-door stage")
    parser.add_argument("--prefill", type=int, default=300_000, help="events the consumers drain")
    parser.add_argument("--kafka-port", type=int, default=19092)
    parser.add_argument("--redis-port", type=int, default=16379)
    args = parser.parse_args(argv)
    for k in [k for k in os.environ if k.startswith("FLOKIT_")]:
        del os.environ[k]

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
    out_dir = RESULTS / f"profile-{stamp}"
    out_dir.mkdir(parents=True)
    tmp = Path(f"/tmp/flokit-bench-profile-{run_id}")
    logs = tmp / "logs"
    logs.mkdir(parents=True)
    bootstrap, redis_url = f"127.0.0.1:{args.kafka_port}", f"redis://127.0.0.1:{args.redis_port}/0"
    started: list[procs.Proc] = []
    topics: list[str] = []
    summary: dict = {"run_id": run_id, "seconds": args.seconds, "prefill": args.prefill, "stages": {}}
    state = key = None
    try:
        from deploy import clickhouse
        from deploy.queue.kafka_queue import create_topics
        from deploy.settings import Settings
        from ingest_api.state.redis_state import RedisState

        warehouse_proc, warehouse_url = procs.start_warehouse(tmp / "warehouse-data", logs)
        started.append(warehouse_proc)
        bodies = workload.make_bodies(tmp, seed=1, batch_bodies=20, single_bodies=3000)
        state = RedisState(redis_url)
        workspace = f"bench-profile-{run_id}"
        state.configure_workspace(workspace, rate_limit_per_minute=10**9)
        key = state.create_key(workspace)

        def topic(suffix):
            name = f"bench-{run_id}-{suffix}"
            create_topics(bootstrap, {name: 4, name + ".dlq": 4})
            topics.extend([name, name + ".dlq"])
            return name

        def db(suffix):
            name = f"bench_profile_{run_id.replace('-', '_').lower()}_{suffix}"
            settings = Settings.from_env({}, clickhouse_url=warehouse_url, clickhouse_database=name)
            clickhouse.migrate(settings)
            return name, settings

        # Pre-fill the consumer stages' queues.
        normalized = workload.normalized_events(args.prefill, seed=2)
        requests = list(workload.request_records(normalized, 4, workspace))
        prefill = topic("prefill")
        print("pre-fill Kafka:", limits.kafka_produce(bootstrap, prefill, requests), flush=True)
        local_dir = tmp / "local"
        local_dir.mkdir()
        print(
            "pre-fill local log:", limits.local_log_append(local_dir / "queue.sqlite3", requests), flush=True
        )
        del normalized, requests

        # (a), (b): the front door.
        api_topic = topic("api")
        api, api_url = procs.start_api(
            {
                "FLOKIT_KAFKA_BOOTSTRAP": bootstrap,
                "FLOKIT_REDIS_URL": redis_url,
                "FLOKIT_TOPIC": api_topic,
                "FLOKIT_DLQ_TOPIC": api_topic + ".dlq",
                "FLOKIT_DATA_DIR": str(tmp / "api"),
            },
            logs,
        )
        started.append(api)
        watch = {"warehouse": warehouse_proc.pid, **{r: p for r, p in api.pids().items()}}
        broker = procs.kafka_broker_pid(args.kafka_port)
        if broker:
            watch["kafka broker"] = broker
        for stage, path, conns in (("batch", "/v1/batch/events", 8), ("single", "/v1/events", 32)):
            print(f"profiling {stage} …", flush=True)
            spy = PySpy(api.pid, out_dir / f"{stage}.txt", subprocesses=True, duration=int(args.seconds) + 30)
            cpu0, t0 = pipeline._cpu(watch), time.monotonic()
            result = wrk.run(
                api_url,
                path,
                bodies["batch_path" if stage == "batch" else "single_path"],
                key,
                seconds=args.seconds,
                connections=conns,
            )
            cpu = pipeline._cpu_delta(cpu0, pipeline._cpu(watch), time.monotonic() - t0)
            spy.stop()
            summary["stages"][stage] = {
                "wrk": {k: result[k] for k in ("requests_per_s", "ok", "non200")},
                "cpu_cores_used": cpu,
                **summarize(spy.out),
            }
        api.stop()

        # (c): the consumer draining.
        for stage, queue_topic, data_dir in (
            ("consumer", prefill, tmp / "consumer"),
            ("consumer-local", None, local_dir),
        ):
            print(f"profiling {stage} …", flush=True)
            data_dir.mkdir(exist_ok=True)
            name, settings = db(stage.replace("-", "_"))
            env = {
                "FLOKIT_CLICKHOUSE_URL": warehouse_url,
                "FLOKIT_CLICKHOUSE_DATABASE": name,
                "FLOKIT_CONSUMER_GROUP": f"bench-{run_id}-{stage}",
                "FLOKIT_DATA_DIR": str(data_dir),
            }
            if queue_topic:
                env.update(
                    FLOKIT_KAFKA_BOOTSTRAP=bootstrap,
                    FLOKIT_TOPIC=queue_topic,
                    FLOKIT_DLQ_TOPIC=queue_topic + ".dlq",
                )
            counter = pipeline.RowCounter(settings)
            consumer = procs.start_consumer(env, logs, name=stage)
            started.append(consumer)
            spy = PySpy(consumer.pid, out_dir / f"{stage}.txt", duration=600)
            w = {
                "consumer": consumer.pid,
                "warehouse": warehouse_proc.pid,
                **({"kafka broker": broker} if broker else {}),
            }
            cpu0, t0 = pipeline._cpu(w), time.monotonic()
            deadline = t0 + 600
            while counter.count() < args.prefill and time.monotonic() < deadline and consumer.alive():
                time.sleep(0.2)
            elapsed = time.monotonic() - t0
            cpu = pipeline._cpu_delta(cpu0, pipeline._cpu(w), elapsed)
            spy.stop()
            consumer.stop()
            counter.close()
            summary["stages"][stage] = {
                "events": args.prefill,
                "seconds": round(elapsed, 2),
                "events_per_s_incl_startup": round(args.prefill / elapsed, 1),
                "cpu_cores_used": cpu,
                **summarize(spy.out),
            }
    finally:
        for p in reversed(started):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                pass
        if state is not None and key:
            from ingest_api.auth import key_id_of

            state.revoke_key(key_id_of(key))
        if topics:
            from kafka.admin import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            admin.delete_topics(topics, timeout_ms=30_000)
            admin.close()
        for child in tmp.iterdir():
            if child != logs:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"profiles in {out_dir}")
    return 0


def markdown(summary: dict) -> str:
    out = []
    for stage, s in summary["stages"].items():
        out.append(f"### {stage}\n")
        extra = s.get("wrk") or {
            k: s[k] for k in ("events", "seconds", "events_per_s_incl_startup") if k in s
        }
        out.append(
            f"{extra}; CPU cores used: {s.get('cpu_cores_used')}; {s['samples']} samples (GIL holder)\n"
        )
        out.append("| category | samples | % |\n|---|---:|---:|")
        out += [f"| {k} | {v} | {p} |" for k, v, p in s["categories"]]
        out.append("\n| top self (function, file) | % |\n|---|---:|")
        out += [f"| `{k}` | {p} |" for k, _, p in s["self"][:15]]
        out.append("\n| top inclusive | % |\n|---|---:|")
        out += [f"| `{k}` | {p} |" for k, _, p in s["inclusive"][:20]]
        out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
