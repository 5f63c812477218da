"""Every setting of every process, read from the environment in one place.

The defaults give the embedded mode (local log, SQLite state, the in-process
ClickHouse engine behind `flokit warehouse`); setting FLOKIT_KAFKA_BOOTSTRAP,
FLOKIT_REDIS_URL or FLOKIT_CLICKHOUSE_URL switches that part to the production
service. The README's configuration table is this file, in prose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Settings:
    # Where embedded-mode state lives (queue log, front-door state, warehouse data).
    data_dir: Path = field(default=Path(".flokit"), metadata={"env": "FLOKIT_DATA_DIR"})

    # Queue. Unset bootstrap servers → the embedded local log under data_dir.
    kafka_bootstrap: str = field(default="", metadata={"env": "FLOKIT_KAFKA_BOOTSTRAP"})
    topic: str = field(default="flokit.events", metadata={"env": "FLOKIT_TOPIC"})
    dlq_topic: str = field(default="flokit.events.dlq", metadata={"env": "FLOKIT_DLQ_TOPIC"})
    partitions: int = field(default=4, metadata={"env": "FLOKIT_PARTITIONS"})
    replication_factor: int = field(default=1, metadata={"env": "FLOKIT_REPLICATION_FACTOR"})
    # min.insync.replicas of created topics: with acks=all, a write needs this many replicas in sync.
    kafka_min_insync_replicas: int = field(default=1, metadata={"env": "FLOKIT_KAFKA_MIN_INSYNC_REPLICAS"})
    # 0: the front door already puts the events of concurrent requests into shared records
    # (ingest_api.enqueue), so waiting to fill a batch only added latency (bench/README.md).
    kafka_linger_ms: int = field(default=0, metadata={"env": "FLOKIT_KAFKA_LINGER_MS"})

    # Front-door shared state. Unset → a SQLite file under data_dir.
    redis_url: str = field(default="", metadata={"env": "FLOKIT_REDIS_URL"})

    # Warehouse, always reached through clickhouse-connect over HTTP. Unset URL →
    # the embedded warehouse (`flokit warehouse`) at warehouse_bind.
    clickhouse_url: str = field(default="", metadata={"env": "FLOKIT_CLICKHOUSE_URL"})
    clickhouse_database: str = field(default="flokit", metadata={"env": "FLOKIT_CLICKHOUSE_DATABASE"})
    clickhouse_cluster: str = field(default="", metadata={"env": "FLOKIT_CLICKHOUSE_CLUSTER"})
    warehouse_bind: str = field(default="127.0.0.1:8123", metadata={"env": "FLOKIT_WAREHOUSE_BIND"})

    # Front door.
    api_bind: str = field(default="127.0.0.1:8080", metadata={"env": "FLOKIT_API_BIND"})
    api_workers: int = field(default_factory=_cpu_count, metadata={"env": "FLOKIT_API_WORKERS"})
    api_connections: int = field(default=1000, metadata={"env": "FLOKIT_API_CONNECTIONS"})
    api_keepalive_seconds: int = field(default=5, metadata={"env": "FLOKIT_API_KEEPALIVE_SECONDS"})
    rate_limit_per_minute: int = field(default=100, metadata={"env": "FLOKIT_RATE_LIMIT_PER_MINUTE"})
    enqueue_timeout_seconds: float = field(default=5.0, metadata={"env": "FLOKIT_ENQUEUE_TIMEOUT_SECONDS"})
    max_body_bytes: int = field(default=8 * 1024 * 1024, metadata={"env": "FLOKIT_MAX_BODY_BYTES"})
    # Deadlines of a request's arrival (deploy/http_handler.py), so a client sending slowly cannot hold a
    # connection: the whole head from its first bytes; the body from the head's end, one second more per so
    # many bytes received, so a slow upload that keeps going is never cut (Apache's mod_reqtimeout's defaults:
    # 20 s, 500 B/s).
    api_head_timeout_seconds: float = field(default=20.0, metadata={"env": "FLOKIT_API_HEAD_TIMEOUT_SECONDS"})
    api_body_timeout_seconds: float = field(default=20.0, metadata={"env": "FLOKIT_API_BODY_TIMEOUT_SECONDS"})
    api_body_min_bytes_per_second: int = field(
        default=500, metadata={"env": "FLOKIT_API_BODY_MIN_BYTES_PER_SECOND"}
    )
    # The front door's two replacements of library internals (deploy/gunicorn_worker.py), each off = gevent
    # and gunicorn as they ship; on by default only where the bench measured it worth it (bench/README.md).
    # httptools: HTTP parsed by deploy/http_handler.py, with the deadlines above, the idle keep-alive timeout
    # and JSON errors for what cannot be parsed; pywsgi: gevent's own handler (none of those).
    api_http_parser: str = field(default="httptools", metadata={"env": "FLOKIT_HTTP_PARSER"})
    # On: each worker keeps its share of the connections (deploy/worker_balance.py; gevent's private accept
    # step overridden). Off (default): gevent's own accept loop, one connection per wake-up, which measured no
    # worse.
    api_connection_balance: bool = field(default=False, metadata={"env": "FLOKIT_CONNECTION_BALANCE"})

    # Consumer.
    consumer_group: str = field(default="flokit-consumers", metadata={"env": "FLOKIT_CONSUMER_GROUP"})
    # Large inserts cost ClickHouse less per row; a worker holds up to three batches (two being written, one
    # being read), so the largest batch is what keeps its peak RSS under the 300 MB target with a margin
    # (bench/README.md).
    batch_max_events: int = field(default=90_000, metadata={"env": "FLOKIT_BATCH_MAX_EVENTS"})
    batch_max_seconds: float = field(default=1.0, metadata={"env": "FLOKIT_BATCH_MAX_SECONDS"})
    consumer_writes: int = field(default=2, metadata={"env": "FLOKIT_CONSUMER_WRITES"})
    # Two patches of library internals, each off = the library as it ships; on by default only where the
    # bench measured it worth it, interleaved in the same run (bench/README.md, session 8).
    # On: kafka-python's socket reads in 256 KiB pieces instead of 4 KiB (deploy/queue/kafka_recv.py). Off:
    # the consumer drained no slower without it.
    kafka_large_reads: bool = field(default=False, metadata={"env": "FLOKIT_KAFKA_LARGE_READS"})
    # On: the consumer pins glibc's mmap threshold through mallopt (deploy/consumer_main.py). On: without it
    # the consumer's peak memory reached the 300 MB target.
    malloc_pin: bool = field(default=True, metadata={"env": "FLOKIT_MALLOC_PIN"})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"], "")
            if raw:
                values[f.name] = _parse(_TYPES[str(f.type)], raw, f.metadata["env"])
        values.update(overrides)
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def embedded_queue(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def embedded_state(self) -> bool:
        return not self.redis_url

    @property
    def embedded_warehouse(self) -> bool:
        return not self.clickhouse_url

    @property
    def warehouse_url(self) -> str:
        """Where clickhouse-connect finds ClickHouse: the configured server, or the embedded warehouse."""
        return self.clickhouse_url or f"http://{self.warehouse_bind}"


_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "Path": Path, "bool": bool}
_ON, _OFF = ("1", "on", "true", "yes"), ("0", "off", "false", "no")


def _parse(kind: type, raw: str, name: str) -> Any:
    if kind is bool:
        if raw.strip().lower() in _ON + _OFF:
            return raw.strip().lower() in _ON
        raise SystemExit(f"{name}={raw!r} is neither on nor off (1/0, on/off, true/false, yes/no)")
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a valid {kind.__name__}") from None
