"""`python -m bench [--quick]`: benchmark a real FloKit Ingest deployment on this machine.

Starts, on free loopback ports and fresh state (topics, databases, data dirs under /tmp), the embedded
warehouse, the front door (`flokit api`: gunicorn with deploy/gunicorn.conf.py), consumers (`flokit consumer`)
and a no-op app on the same gunicorn configuration; uses the Kafka broker on 127.0.0.1:19092 and Redis on
16379 (started with deploy/kafka.sh / deploy/redis.sh if needed, never stopped); drives them with wrk and
bench.loadgen; writes bench/results/<timestamp>.json and <timestamp>-e2e.png and prints a table. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    mode: str
    prefill_events: int  # consumer-alone backlog, raw produce / append / insert volume
    e2e_seconds: float
    batch_seconds: float
    single_seconds: float
    open_seconds: float
    noop_seconds: float
    validation_seconds: float
    single_raw_records: int
    batch_bodies: int
    single_bodies: int
    local_batch_seconds: float
    producer_performance: bool
    flask_noop: bool
    generator_capacity: bool
    batch_conns: int = 8
    # Single events: many clients at once, as a busy app back end has. Greenlets make an open connection
    # cheap, and at 3,000 requests/s of ~20 ms each some 60 are in flight: fewer connections would queue
    # requests in the generator, not in the server.
    single_conns: int = 256
    e2e_conns: int = 4
    open_fraction: float = 0.65
    # More open-loop runs (full run): lower fractions of saturation (where the p99 target holds when the
    # machine is not full) and the target's own rate, whatever the saturation.
    lower_open_fractions: tuple[float, ...] = ()
    target_open_rates: tuple[float, ...] = ()
    consumer_timeout: float = 300.0
    balance_attempts: int = 3
    e2e_at_target_seconds: float = 0  # e2e on Kafka at the target's offered rate (open loop); 0: skipped


FULL = Plan(
    "full",
    prefill_events=1_000_000,
    e2e_seconds=60,
    batch_seconds=20,
    single_seconds=20,
    open_seconds=20,
    noop_seconds=10,
    validation_seconds=3,
    single_raw_records=50_000,
    batch_bodies=40,
    single_bodies=5000,
    local_batch_seconds=10,
    producer_performance=True,
    flask_noop=True,
    generator_capacity=True,
    e2e_at_target_seconds=60,
    lower_open_fractions=(0.3, 0.5),
    target_open_rates=(3000.0,),
)
QUICK = Plan(
    "quick",
    prefill_events=25_000,
    e2e_seconds=10,
    batch_seconds=2,
    single_seconds=2,
    open_seconds=1,
    noop_seconds=1,
    validation_seconds=0.4,
    single_raw_records=3_000,
    batch_bodies=8,
    single_bodies=1000,
    local_batch_seconds=0,
    producer_performance=False,
    flask_noop=False,
    generator_capacity=False,
    consumer_timeout=60.0,
    balance_attempts=1,
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in (
        "flask",
        "gunicorn",
        "kafka-python",
        "marshmallow",
        "orjson",
        "clickhouse-connect",
        "chdb-core",
        "redis",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    try:
        out["wrk"] = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
    except (OSError, IndexError):
        out["wrk"] = None
    try:
        from kafka.record import util as kafka_util

        out["kafka_python_crc32c"] = "C (crc32c package)" if kafka_util.crc32c_c else "pure Python"
    except ImportError:
        out["kafka_python_crc32c"] = None
    git = ["git", "-C", str(Path(__file__).resolve().parent.parent)]
    try:  # read-only: which tree was measured
        out["git_commit"] = subprocess.run(
            git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            git + ["status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
        out["git_modified_files"] = [ln[3:] for ln in dirty if ln.strip()]
    except (OSError, subprocess.TimeoutExpired):
        out["git_commit"] = None
    out["kafka_broker_jars"] = ",".join(
        sorted(p.name for p in Path("~/.cache/flokit").expanduser().glob("kafka-*"))
    )
    return out


def _machine() -> dict:
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        None,
    )
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gib": round(int(mem) / 2**20, 1),
        "kernel": os.uname().release,
        "loadavg_at_start": None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--kafka-port", type=int, default=int(os.environ.get("KAFKA_PORT", "19092")))
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("REDIS_PORT", "16379")))
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="FLOKIT_X=V",
        help="a setting for every process started (e.g. FLOKIT_BATCH_MAX_EVENTS=20000); repeatable",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's data dirs and topics")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL

    # Every process gets exactly the settings given here, whatever this shell has exported.
    for k in [k for k in os.environ if k.startswith("FLOKIT_")]:
        del os.environ[k]
    overrides = dict(kv.split("=", 1) for kv in args.env)
    os.environ.update(overrides)

    run = Run(plan, args, overrides)
    try:
        run.execute()
    except KeyboardInterrupt:
        log("interrupted")
        run.results["error"] = "interrupted"
    except Exception as exc:  # noqa: BLE001 — the partial results are still written
        traceback.print_exc()
        run.results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        run.cleanup()
        run.finish()
    return 1 if run.results.get("error") else 0


class Run:
    def __init__(self, plan: Plan, args, overrides: dict):
        self.plan = plan
        self.args = args
        self.stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.run_id = f"{self.stamp}-{uuid.uuid4().hex[:6]}"
        self.tmp = Path(f"/tmp/flokit-bench-{self.run_id}")
        self.logs = self.tmp / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.bootstrap = f"127.0.0.1:{args.kafka_port}"
        self.redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
        self.procs = []  # everything started, stopped in cleanup()
        self.topics: list[str] = []
        self.started = time.monotonic()
        self.results: dict = {
            "run_id": self.run_id,
            "mode": plan.mode,
            "started_at": self.stamp,
            "plan": asdict(plan),
            "machine": _machine(),
            "versions": _versions(),
            "config": {"env_overrides": overrides},
            "logs": str(self.logs),
            "phase_seconds": {},
        }

    # --- helpers ---------------------------------------------------------------------------------------

    def phase(self, title: str, fn, *a, **kw):
        from bench import procs

        # The disk writes of earlier phases (a 1,000,000-event pre-fill is ~300 MB in the broker's log and as
        # much in the local log) stay dirty in the page cache until the kernel writes them back, 30 s later
        # (vm.dirty_expire_centisecs): in the middle of a later phase, on the same 2 cores. Write them now.
        dirty_kb, t = procs.dirty_kb(), time.monotonic()
        os.sync()
        synced = round(time.monotonic() - t, 2)
        log(f"{title} …")
        t = time.monotonic()
        load = procs.loadavg()
        try:
            return fn(*a, **kw)
        finally:
            self.results["phase_seconds"][title] = {
                "seconds": round(time.monotonic() - t, 1),
                "loadavg_before": load,
                "dirty_kb_before": dirty_kb,
                "sync_seconds": synced,
            }

    def drop_database(self, database: str) -> None:
        """Drop a phase's database once its figures are taken, so that the background merges of its parts
        do not run during the phases after it (kept with --keep)."""
        from deploy import clickhouse

        if self.args.keep:
            return
        client = clickhouse.connect(self.settings_for("default"))
        try:
            client.command(f"DROP DATABASE IF EXISTS {database} SYNC")
        finally:
            client.close()

    def topic(self, suffix: str, partitions: int = 4) -> str:
        from deploy.queue.kafka_queue import create_topics

        name = f"bench-{self.run_id}-{suffix}"
        create_topics(self.bootstrap, {name: partitions, name + ".dlq": partitions})
        self.topics += [name, name + ".dlq"]
        return name

    def settings_for(self, database: str):
        from deploy.settings import Settings

        return Settings.from_env({}, clickhouse_url=self.warehouse_url, clickhouse_database=database)

    def database(self, suffix: str) -> str:
        return f"bench_{self.run_id.replace('-', '_').lower()}_{suffix}"

    def migrate(self, database: str):
        from deploy import clickhouse

        settings = self.settings_for(database)
        clickhouse.migrate(settings)
        return settings

    def consumer_env(self, database: str, group: str, *, topic: str | None, data_dir: Path) -> dict:
        env = {
            "FLOKIT_CLICKHOUSE_URL": self.warehouse_url,
            "FLOKIT_CLICKHOUSE_DATABASE": database,
            "FLOKIT_CONSUMER_GROUP": group,
            "FLOKIT_DATA_DIR": str(data_dir),
        }
        if topic:
            env.update(
                FLOKIT_KAFKA_BOOTSTRAP=self.bootstrap, FLOKIT_TOPIC=topic, FLOKIT_DLQ_TOPIC=topic + ".dlq"
            )
        return env

    def watch_front_door(self, api) -> dict[str, int]:
        """self.watch() plus the gunicorn master and each front-door worker of `api`."""
        return {
            **self.watch(),
            **{
                ("frontdoor " + r.split(".", 1)[1] if "." in r else "gunicorn master"): p
                for r, p in api.pids().items()
            },
        }

    def watch(self) -> dict[str, int]:
        from bench import procs

        out = {"warehouse": self.warehouse.pid}
        broker = procs.kafka_broker_pid(self.args.kafka_port)
        if broker:
            out["kafka broker"] = broker
        return out

    # --- the run -----------------------------------------------------------------------------------------

    def execute(self) -> None:
        from bench import limits, pipeline, procs, workload, wrk

        plan, R = self.plan, self.results
        R["machine"]["loadavg_at_start"] = procs.loadavg()
        if not wrk.available():
            raise RuntimeError("wrk is not installed (Debian package `wrk`)")
        for script, port_var, port in (
            ("kafka.sh", "KAFKA_PORT", self.args.kafka_port),
            ("redis.sh", "REDIS_PORT", self.args.redis_port),
        ):
            subprocess.run(
                ["bash", str(procs.ROOT / "deploy" / script), "start"],
                check=True,
                capture_output=True,
                env={**os.environ, port_var: str(port)},
                timeout=600,
            )

        # Fixtures: bodies, normalized events, the warehouse, a key with a rate limit that never bites.
        log(f"{plan.mode} run {self.run_id}; temp files in {self.tmp}")
        # The warehouse starts (chdb loads) while this process generates the fixtures.
        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(1)
        warehouse_started = pool.submit(procs.start_warehouse, self.tmp / "warehouse-data", self.logs)
        try:
            bodies = workload.make_bodies(
                self.tmp, seed=1, batch_bodies=plan.batch_bodies, single_bodies=plan.single_bodies
            )
            R["workload"] = {k: v for k, v in bodies.items() if not k.endswith("_path")}
            raw_events = workload.EventSource(seed=7).events(5000)
            normalized = workload.normalized_events(plan.prefill_events, seed=2)
        finally:
            self.warehouse, self.warehouse_url = warehouse_started.result()
            self.procs.append(self.warehouse)
            pool.shutdown()
        from deploy.settings import Settings
        from ingest_api.state.redis_state import RedisState

        self.state = RedisState(self.redis_url)
        self.workspace = f"bench-{self.run_id}"
        self.state.configure_workspace(self.workspace, rate_limit_per_minute=10**9)
        self.key = self.state.create_key(self.workspace)
        R["config"].update(
            {
                "workspace": self.workspace,
                "rate_limit_per_minute": 10**9,
                "api_workers": int(os.environ.get("FLOKIT_API_WORKERS") or len(os.sched_getaffinity(0))),
                "api_worker_class": runpy.run_path(
                    str(Path(__file__).resolve().parent.parent / "deploy" / "gunicorn.conf.py")
                )["worker_class"],
                "api_connections": int(os.environ.get("FLOKIT_API_CONNECTIONS") or 1000),
                "batch_max_events": Settings.from_env().batch_max_events,
                "kafka": self.bootstrap,
                "redis": self.redis_url,
                "warehouse": self.warehouse_url,
            }
        )
        requests = list(workload.request_records(normalized, 4, self.workspace))
        R["workload"]["prefill_records_per_request"] = round(sum(map(len, requests)) / len(requests), 2)

        R["phase_seconds"]["setup"] = {"seconds": round(time.monotonic() - self.started, 1)}

        # --- limits --------------------------------------------------------------------------------
        L = R["limits"] = {}
        L["validation"] = self.phase(
            "limit: validation loop", limits.validation, raw_events, plan.validation_seconds
        )
        L["path_steps"] = self.phase(
            "limit: per-event steps",
            limits.path_steps,
            raw_events,
            normalized,
            seconds=min(0.5, plan.validation_seconds / 4),
        )
        L["clickhouse_insert"] = self.phase(
            "limit: raw ClickHouse insert",
            limits.clickhouse_insert,
            self.settings_for(self.database("raw")),
            normalized,
            R["config"]["batch_max_events"],
        )
        self.drop_database(self.database("raw"))
        prefill_topic = self.topic("prefill")
        L["kafka_produce"] = self.phase(
            "limit: raw Kafka produce (pre-fills the consumer topic)",
            limits.kafka_produce,
            self.bootstrap,
            prefill_topic,
            requests,
        )
        single_topic = self.topic("single")
        from schemas import envelope

        singles = [
            [(i % 4, envelope.encode_records(self.workspace, "2026-01-01T00:00:00.000Z", [e])[0], 1)]
            for i, e in enumerate(normalized[: plan.single_raw_records])
        ]
        L["kafka_produce_single"] = self.phase(
            "limit: raw Kafka produce, 1-event records",
            limits.kafka_produce,
            self.bootstrap,
            single_topic,
            singles,
        )
        if plan.producer_performance:
            pp_topic = self.topic("pperf")
            L["producer_performance"] = self.phase(
                "limit: Kafka ProducerPerformance",
                limits.producer_performance,
                self.bootstrap,
                pp_topic,
                max(3000, L["kafka_produce"]["records"]),
                L["kafka_produce"]["avg_record_bytes"],
            )
        local_prefill = self.tmp / "local-prefill"
        local_prefill.mkdir()
        L["local_log_append"] = self.phase(
            "limit: raw local-log append (pre-fills the local log)",
            limits.local_log_append,
            local_prefill / "queue.sqlite3",
            requests,
        )
        del singles

        # --- consumer alone ---------------------------------------------------------------------------
        for key, topic, data_dir in (
            ("consumer_kafka", prefill_topic, self.tmp / "consumer-kafka"),
            ("consumer_local", None, local_prefill),
        ):
            data_dir.mkdir(exist_ok=True)
            db = self.database(key)
            settings = self.migrate(db)
            env = self.consumer_env(db, f"bench-{self.run_id}-{key}", topic=topic, data_dir=data_dir)
            R[key] = self.phase(
                f"{key}: draining {plan.prefill_events:,} events",
                pipeline.consumer_alone,
                env,
                settings,
                plan.prefill_events,
                self.logs,
                self.watch(),
                plan.consumer_timeout,
                key,
            )
            log(f"  {key}: {R[key]['events_per_s']:,.0f} events/s")
            self.drop_database(db)
        del normalized, requests

        # --- front door on Kafka: end to end, then saturation ------------------------------------------
        e2e_topic = self.topic("e2e")
        api_env = {
            "FLOKIT_KAFKA_BOOTSTRAP": self.bootstrap,
            "FLOKIT_REDIS_URL": self.redis_url,
            "FLOKIT_TOPIC": e2e_topic,
            "FLOKIT_DLQ_TOPIC": e2e_topic + ".dlq",
            "FLOKIT_DATA_DIR": str(self.tmp / "api-kafka"),
        }
        api, api_url = self.phase(
            "start front door (Kafka)", procs.start_api, api_env, self.logs, "api-kafka"
        )
        self.procs.append(api)
        watch = self.watch_front_door(api)
        R["e2e_kafka"] = self.end_to_end(
            "e2e (Kafka)",
            "e2e-kafka",
            api_url,
            bodies,
            watch,
            topic=e2e_topic,
            data_dir=self.tmp / "api-kafka",
        )
        log(f"  e2e (Kafka): {R['e2e_kafka'].get('events_per_s') or 0:,.0f} events/s")
        if plan.e2e_at_target_seconds:
            from bench.report import TARGETS

            rate = TARGETS["e2e_events_per_s"] / bodies["batch_size"]
            R["e2e_kafka_at_target"] = self.end_to_end(
                f"e2e (Kafka) at the target rate, {rate:g} requests/s open loop",
                "e2e-kafka-target",
                api_url,
                bodies,
                watch,
                topic=e2e_topic,
                data_dir=self.tmp / "api-kafka",
                seconds=plan.e2e_at_target_seconds,
                conns=16,
                open_rate=rate,
                start_at_end=True,
            )
            log(
                f"  e2e (Kafka) at {rate * bodies['batch_size']:,.0f} events/s offered: "
                f"{R['e2e_kafka_at_target'].get('events_per_s') or 0:,.0f} events/s, lag growth "
                f"{R['e2e_kafka_at_target'].get('lag_growth_per_s_second_half')}/s"
            )
        F = R["frontdoor_kafka"] = {}
        F["batch_saturation"] = self.saturate(
            api,
            api_url,
            "/v1/batch/events",
            bodies,
            plan.batch_seconds,
            plan.batch_conns,
            "batch (Kafka)",
            watch,
        )
        F["single_saturation"] = self.saturate(
            api,
            api_url,
            "/v1/events",
            bodies,
            plan.single_seconds,
            plan.single_conns,
            "single (Kafka)",
            watch,
        )
        rate = max(10.0, round(F["single_saturation"]["requests_per_s"] * plan.open_fraction, -1))
        F["single_open_loop"] = self.phase(
            f"single open loop at {rate:,.0f} req/s",
            self.open_loop,
            api_url,
            bodies["single_path"],
            rate,
            plan.open_seconds,
            watch,
        )
        saturation = F["single_saturation"]["requests_per_s"]
        more = [max(10.0, round(saturation * f, -1)) for f in plan.lower_open_fractions] + list(
            plan.target_open_rates
        )
        F["single_open_loop_more"] = [
            self.phase(
                f"single open loop at {r:,.0f} req/s",
                self.open_loop,
                api_url,
                bodies["single_path"],
                r,
                plan.open_seconds,
                watch,
            )
            for r in more
        ]
        self.record_rss("Kafka", api)
        api.stop()

        # --- HTTP ceiling --------------------------------------------------------------------------------
        N = R["http_ceiling"] = {}
        noop, noop_url = procs.start_noop({}, self.logs)
        self.procs.append(noop)
        nwatch = {**self.watch(), **{("noop " + r): p for r, p in noop.pids().items()}}
        N["single_wrk"] = self.saturate(
            noop, noop_url, "/v1/events", bodies, plan.noop_seconds, plan.single_conns, "no-op single", nwatch
        )
        N["single_open_loop"] = self.phase(
            f"no-op open loop at {rate:,.0f} req/s",
            self.open_loop,
            noop_url,
            bodies["single_path"],
            rate,
            plan.open_seconds,
            nwatch,
        )
        N["batch_wrk"] = self.saturate(
            noop,
            noop_url,
            "/v1/batch/events",
            bodies,
            plan.noop_seconds,
            plan.batch_conns,
            "no-op batch",
            nwatch,
        )
        if plan.generator_capacity:
            from bench import loadgen

            N["loadgen_closed_capacity"] = self.phase(
                "load generator capacity (closed loop on the no-op)",
                loadgen.spawn,
                noop_url,
                "/v1/events",
                bodies["single_path"],
                self.key,
                seconds=plan.noop_seconds,
                conns=plan.single_conns,
            )
            cap = N["loadgen_closed_capacity"]["requests_per_s"]
            N["loadgen_open_capacity"] = self.phase(
                f"load generator open loop at {round(cap * 0.5, -2):,.0f} req/s on the no-op",
                self.open_loop,
                noop_url,
                bodies["single_path"],
                round(cap * 0.5, -2),
                plan.noop_seconds,
                nwatch,
            )
        noop.stop()
        if plan.flask_noop:
            fnoop, fnoop_url = procs.start_noop(
                {}, self.logs, app="bench.noop_app:flask_app", name="noop-flask"
            )
            self.procs.append(fnoop)
            N["single_flask_wrk"] = self.saturate(
                fnoop,
                fnoop_url,
                "/v1/events",
                bodies,
                plan.noop_seconds,
                plan.single_conns,
                "Flask no-op single",
                {},
            )
            fnoop.stop()

        # --- front door on the local log: end to end (and batch saturation in the full run) -------------
        local_dir = self.tmp / "api-local"
        local_dir.mkdir()
        api_env = {"FLOKIT_REDIS_URL": self.redis_url, "FLOKIT_DATA_DIR": str(local_dir)}
        api, api_url = self.phase(
            "start front door (local log)", procs.start_api, api_env, self.logs, "api-local"
        )
        self.procs.append(api)
        watch = self.watch_front_door(api)
        R["e2e_local"] = self.end_to_end(
            "e2e (local log)", "e2e-local", api_url, bodies, watch, topic=None, data_dir=local_dir
        )
        log(f"  e2e (local log): {R['e2e_local'].get('events_per_s') or 0:,.0f} events/s")
        if plan.local_batch_seconds:
            R["frontdoor_local"] = {
                "batch_saturation": self.saturate(
                    api,
                    api_url,
                    "/v1/batch/events",
                    bodies,
                    plan.local_batch_seconds,
                    plan.batch_conns,
                    "batch (local log)",
                    watch,
                )
            }
        self.record_rss("local log", api)
        api.stop()

        # --- peak RSS of the long-lived processes ----------------------------------------------------------
        rss = R.setdefault("peak_rss_mb", {})
        rss["warehouse"] = procs.peak_rss_mb(self.warehouse.pid)
        broker = procs.kafka_broker_pid(self.args.kafka_port)
        if broker:
            rss["kafka broker (since it started; shared)"] = procs.peak_rss_mb(broker)
        for key in ("consumer_kafka", "consumer_local"):
            rss[f"consumer ({key.split('_')[1]}, draining)"] = R[key]["consumer_peak_rss_mb"]
        for key in ("e2e_kafka", "e2e_local"):
            rss[f"consumer ({key.split('_')[1]}, e2e)"] = R[key]["consumer_peak_rss_mb"]
        if R.get("e2e_kafka_at_target"):
            rss["consumer (kafka, e2e at target rate)"] = R["e2e_kafka_at_target"]["consumer_peak_rss_mb"]

    def saturate(
        self, server, url: str, path: str, bodies: dict, seconds: float, conns: int, what: str, watch: dict
    ) -> dict:
        """wrk at saturation. wrk opens all its connections at once and gunicorn's workers accept
        greedily, so now and then one worker gets (nearly) all keep-alive connections and the other idles:
        a run whose busiest worker used more than twice the CPU of the least busy one is repeated (up to
        Plan.balance_attempts runs, all kept in `attempts`); the first balanced run is the figure."""
        attempts = []
        for _ in range(self.plan.balance_attempts):
            result = self._saturate_once(server, url, path, bodies, seconds, conns, what, watch)
            workers = [v for k, v in result["cpu_cores_used"].items() if "worker" in k and v is not None]
            result["workers_balanced"] = len(workers) < 2 or min(workers) >= 0.5 * max(workers)
            attempts.append(result)
            if result["workers_balanced"]:
                break
            log(
                f"  {what}: workers unbalanced ({result['cpu_cores_used']}); "
                + ("again" if len(attempts) < self.plan.balance_attempts else "keeping the best run")
            )
        chosen = next(
            (a for a in attempts if a["workers_balanced"]), max(attempts, key=lambda a: a["requests_per_s"])
        )
        out = dict(chosen)
        if len(attempts) > 1:
            out["attempts"] = [
                {k: a[k] for k in ("requests_per_s", "cpu_cores_used", "workers_balanced")} for a in attempts
            ]
        return out

    def _saturate_once(
        self, server, url: str, path: str, bodies: dict, seconds: float, conns: int, what: str, watch: dict
    ) -> dict:
        from bench import pipeline, procs, wrk

        batch = path.endswith("/batch/events")
        cpu0, busy0, t0 = pipeline._cpu(watch), procs.machine_cpu(), time.monotonic()
        result = self.phase(
            f"{what}: wrk {conns} connections, {seconds:g} s",
            wrk.run,
            url,
            path,
            bodies["batch_path" if batch else "single_path"],
            self.key,
            seconds=seconds,
            connections=conns,
        )
        elapsed = time.monotonic() - t0
        result["cpu_cores_used"] = pipeline._cpu_delta(cpu0, pipeline._cpu(watch), elapsed)
        busy1 = procs.machine_cpu()
        result["machine_busy"] = round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 2, 2)
        result["latency_ms"] = {k: round(v / 1000, 2) for k, v in result.pop("latency_us").items()}
        if batch:
            result["events_per_s"] = round(result["requests_per_s"] * bodies["batch_size"], 1)
        if result["non200"] or any(result["socket_errors"].values()):
            log(
                f"  WARNING {what}: {result['non200']} non-200 answers (last {result['last_non200']}), "
                f"socket errors {result['socket_errors']}"
            )
        log(
            f"  {what}: {result['requests_per_s']:,.0f} req/s"
            + (f" = {result['events_per_s']:,.0f} events/s" if batch else "")
            + f", p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms"
        )
        return result

    def open_loop(self, url: str, bodies_path: str, rate: float, seconds: float, watch: dict) -> dict:
        from bench import loadgen, pipeline, procs

        cpu0, busy0, t0 = pipeline._cpu(watch), procs.machine_cpu(), time.monotonic()
        result = loadgen.spawn(
            url,
            "/v1/events",
            bodies_path,
            self.key,
            seconds=seconds,
            conns=self.plan.single_conns,
            open_rate=rate,
            max_requests=int(rate * seconds) + 1,
            warmup=True,
        )
        elapsed = time.monotonic() - t0
        result["cpu_cores_used"] = pipeline._cpu_delta(cpu0, pipeline._cpu(watch), elapsed)
        busy1 = procs.machine_cpu()
        result["machine_busy"] = round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 2, 2)
        lat = result["latency_ms"]
        log(
            f"  open loop {rate:,.0f} req/s: got {result['requests_per_s']:,.0f} req/s, "
            f"p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, p999 {lat.get('p999')} ms; "
            f"statuses {result['statuses']}"
        )
        return result

    def end_to_end(
        self,
        title: str,
        name: str,
        api_url: str,
        bodies: dict,
        watch: dict,
        *,
        topic: str | None,
        data_dir: Path,
        seconds: float | None = None,
        conns: int | None = None,
        open_rate: float | None = None,
        start_at_end: bool = False,
    ) -> dict:
        """An end-to-end phase: a fresh database and consumer group (both named after `name`) behind the front
        door at `api_url`, load from bench.loadgen (closed loop, or open loop at `open_rate` requests/s),
        until every accepted event is a row. `start_at_end`: the group starts at the topic's current end (a
        topic an earlier phase already filled), not at its beginning."""
        from bench import pipeline

        settings = self.migrate(self.database(name.replace("-", "_")))
        group = f"bench-{self.run_id}-{name}"
        if start_at_end:
            self.commit_end_offsets(topic, group)
        env = self.consumer_env(settings.clickhouse_database, group, topic=topic, data_dir=data_dir)
        try:
            return self.phase(
                title,
                pipeline.end_to_end,
                env,
                settings,
                api_url,
                bodies["batch_path"],
                self.key,
                seconds=self.plan.e2e_seconds if seconds is None else seconds,
                conns=self.plan.e2e_conns if conns is None else conns,
                log_dir=self.logs,
                watch=watch,
                name=name,
                drain_timeout=self.plan.consumer_timeout,
                open_rate=open_rate,
            )
        finally:
            self.drop_database(settings.clickhouse_database)

    def commit_end_offsets(self, topic: str, group: str) -> None:
        from kafka import KafkaConsumer, TopicPartition
        from kafka.structs import OffsetAndMetadata

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            ends = consumer.end_offsets(parts)
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in ends.items()})
        finally:
            consumer.close(autocommit=False)

    def record_rss(self, label: str, api) -> None:
        rss = self.results.setdefault("peak_rss_mb", {})
        for role, value in api.peak_rss().items():
            if "." in role:
                rss[f"frontdoor {role.split('.', 1)[1].replace('worker', 'worker ')} ({label})"] = value
            else:
                rss[f"gunicorn master ({label})"] = value

    # --- the end --------------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        self.cleanup_started = time.monotonic()
        for proc in reversed(self.procs):
            try:
                proc.stop()
            except Exception:  # noqa: BLE001
                pass
        if getattr(self, "key", None):
            try:
                from ingest_api.auth import key_id_of

                self.state.revoke_key(key_id_of(self.key))
            except Exception:  # noqa: BLE001
                pass
        if self.args.keep:
            return
        if self.topics:
            try:
                from kafka.admin import KafkaAdminClient

                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
                admin.delete_topics(self.topics, timeout_ms=30_000)
                admin.close()
            except Exception as exc:  # noqa: BLE001
                log(f"could not delete topics {self.topics}: {exc}")
        for child in self.tmp.iterdir() if self.tmp.exists() else []:
            if child != self.logs:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    def finish(self) -> None:
        from bench import report

        self.results["phase_seconds"]["cleanup"] = {
            "seconds": round(time.monotonic() - self.cleanup_started, 1)
        }

        self.results["total_seconds"] = round(time.monotonic() - self.started, 1)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"{self.stamp}{'-quick' if self.plan.mode == 'quick' else ''}.json"
        if not self.args.no_plot:
            try:
                png = report.plot(self.results, out.with_suffix("").with_name(out.stem + "-e2e.png"))
                self.results["plot"] = str(png) if png else None
            except Exception as exc:  # noqa: BLE001
                self.results["plot_error"] = repr(exc)
        report.write_json(self.results, out)
        print()
        print(report.table(self.results))
        print()
        log(
            f"{self.plan.mode} run took {self.results['total_seconds']:.0f} s; results in {out}"
            + (f", plot {self.results.get('plot')}" if self.results.get("plot") else "")
        )
        if self.results.get("error"):
            log(f"FAILED: {self.results['error']}")


if __name__ == "__main__":
    sys.exit(main())
