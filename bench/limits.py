"""The limits each figure is compared with, measured in the same run on the same machine:

* validation: schemas.events.EventValidator().validate over the run's events in a tight loop (one core);
* the other per-event CPU steps of the path, for the profile: envelope encoding (front door), envelope
  decoding and schemas.warehouse.event_row over envelope lines, every event stamped (consumer's worst case);
* raw Kafka produce: a bare kafka-python producer with the front door's own settings (acks=all, idempotent,
  its linger, 512 KiB batches) publishing the same envelopes, pipelined; and Kafka's own Java
  ProducerPerformance with the same record size;
* raw local-log append: deploy.queue.local_log.LocalLogPublisher, one publish per 1,000-event request, as the
  front door does in embedded mode;
* raw ClickHouse insert: a bare clickhouse-connect raw_insert of the same rows as JSONEachRow documents
  (the envelopes' event lines, EVENT_COLUMNS, INSERT_SETTINGS — what consumer/writer.py sends)
  into a freshly migrated database of the warehouse under test, in consumer-sized blocks.

The raw produce and append runs double as the pre-fill of the consumer-alone phases.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time
from pathlib import Path

import orjson

from deploy.settings import Settings


def _rate(count: float, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def validation(raw_events: list[dict], seconds: float) -> dict:
    from schemas.events import EventValidator

    validator = EventValidator()
    validate = validator.validate
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for e in raw_events:
            validate(e)
        done += len(raw_events)
    elapsed = time.perf_counter() - start
    return {
        "events": done,
        "seconds": round(elapsed, 3),
        "events_per_s": _rate(done, elapsed),
        "us_per_event": round(elapsed / done * 1e6, 2),
    }


def path_steps(
    raw_events: list[dict], normalized: list[dict], partitions: int = 4, seconds: float = 0.5
) -> dict:
    """Per-event cost of the other CPU steps (one core each), on 1,000-event requests."""
    from ingest_api.ids import new_event_ids
    from schemas import envelope, warehouse
    from schemas.events import validate_batch_shape

    out = {}
    body = orjson.dumps({"events": raw_events[:1000]})
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        validate_batch_shape(orjson.loads(body))
        n += 1000
    out["parse_body_json"] = _rate(n, time.perf_counter() - start)

    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        new_event_ids(1000, time.time())
        n += 1000
    out["event_ids"] = _rate(n, time.perf_counter() - start)

    chunk = normalized[:1000]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        groups: dict[int, list] = {}
        for e in chunk:
            groups.setdefault(envelope.partition_for(envelope.partition_key(e), partitions), []).append(e)
        for group in groups.values():
            envelope.encode_records("bench", "2026-01-01T00:00:00.000Z", group)
        n += len(chunk)
    out["group_and_encode_envelopes"] = _rate(n, time.perf_counter() - start)

    [value] = envelope.encode_records("bench", "2026-01-01T00:00:00.000Z", chunk, max_bytes=1 << 30)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envelope.decode(value)
        n += len(chunk)
    out["decode_envelopes"] = _rate(n, time.perf_counter() - start)

    lines = envelope.decode(value).rows
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:  # the worst case: every event stamped with a linked user
        b"\n".join([warehouse.event_row(line, "usr_0123456789") for line in lines])
        n += len(chunk)
    out["event_rows_all_linked"] = _rate(n, time.perf_counter() - start)
    return {"events_per_s": out, "note": "one core, tight loop, 1,000-event chunks"}


# --- Kafka ----------------------------------------------------------------------------------------------


def _linger_ms() -> int:
    """The front door's own linger: its setting as the processes this run starts read it (with --env)."""
    return Settings.from_env().kafka_linger_ms


def kafka_produce(bootstrap: str, topic: str, requests: list[list[tuple[int, bytes, int]]]) -> dict:
    """Publish every request's records with the front door's producer settings, pipelined, then flush."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=_linger_ms(),
        batch_size=512 * 1024,
        max_request_size=16 * 1024 * 1024,
        request_timeout_ms=30_000,
        max_block_ms=30_000,
        allow_auto_create_topics=False,
    )
    try:
        producer.partitions_for(topic)  # metadata before the clock starts
        events = records = size = 0
        start = time.perf_counter()
        futures = []
        for request in requests:
            for partition, value, count in request:
                futures.append(producer.send(topic, value=value, partition=partition))
                events += count
                records += 1
                size += len(value)
        producer.flush(timeout=120)
        elapsed = time.perf_counter() - start
        failed = sum(1 for f in futures if f.failed())
    finally:
        producer.close(timeout=30)
    if failed:
        raise RuntimeError(f"raw produce: {failed} records failed")
    return {
        "events": events,
        "records": records,
        "bytes": size,
        "seconds": round(elapsed, 3),
        "events_per_s": _rate(events, elapsed),
        "records_per_s": _rate(records, elapsed),
        "mb_per_s": round(size / elapsed / 1e6, 1),
        "avg_record_bytes": round(size / records),
    }


def producer_performance(bootstrap: str, topic: str, records: int, record_size: int) -> dict | None:
    """Kafka's own Java producer benchmark from the cached broker jars (None when they are not there)."""
    libs = sorted(glob.glob(os.path.expanduser("~/.cache/flokit/kafka-*/libs")))
    if not libs:
        return None
    cmd = [
        "java",
        "-Xmx512m",
        "-cp",
        libs[-1] + "/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={bootstrap}",
        "acks=all",
        "enable.idempotence=true",
        f"linger.ms={_linger_ms()}",
        "batch.size=524288",
        "max.request.size=16777216",
    ]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    m = re.search(
        r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
        r"([\d.]+) ms max latency(?:, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th)?",
        out.stdout,
    )
    if out.returncode != 0 or not m:
        return {"error": (out.stdout + out.stderr)[-1500:]}
    return {
        "records": int(m.group(1)),
        "records_per_s": float(m.group(2)),
        "mb_per_s": float(m.group(3)),
        "avg_latency_ms": float(m.group(4)),
        "p99_latency_ms": float(m.group(8)) if m.group(8) else None,
        "record_bytes": record_size,
        "wall_seconds_incl_jvm_start": round(wall, 2),
    }


def local_log_append(path: Path, requests: list[list[tuple[int, bytes, int]]], partitions: int = 4) -> dict:
    """One LocalLogPublisher.publish per request (synchronous=FULL, as the front door)."""
    from deploy.queue.local_log import LocalLogPublisher
    from schemas.queue import Record

    publisher = LocalLogPublisher(path, partitions, 30.0)
    try:
        publisher.partition_count()
        events = records = size = 0
        start = time.perf_counter()
        for request in requests:
            publisher.publish([Record(p, v) for p, v, _ in request], 30.0)
            events += sum(c for _, _, c in request)
            records += len(request)
            size += sum(len(v) for _, v, _ in request)
        elapsed = time.perf_counter() - start
    finally:
        publisher.close()
    return {
        "events": events,
        "records": records,
        "publishes": len(requests),
        "seconds": round(elapsed, 3),
        "events_per_s": _rate(events, elapsed),
        "publishes_per_s": _rate(len(requests), elapsed),
        "mb_per_s": round(size / elapsed / 1e6, 1),
    }


# --- ClickHouse -------------------------------------------------------------------------------------------


def _row_builder(warehouse):
    """events -> the JSONEachRow body the consumer hands clickhouse-connect (envelope lines + suffix)."""
    from schemas import envelope

    received = "2026-01-01T00:00:00.000Z"

    def build(events: list[dict]) -> bytes:
        values = envelope.encode_records("bench", received, events, max_bytes=1 << 30)
        return b"\n".join(bytes(envelope.decode(v).lines) for v in values)

    return build


def clickhouse_insert(settings, normalized: list[dict], block: int) -> dict:
    """A bare clickhouse-connect raw_insert of the consumer's JSONEachRow bodies into a freshly migrated
    database, `block` rows per insert (the consumer's FLOKIT_BATCH_MAX_EVENTS), as consumer/writer.py does."""
    from deploy import clickhouse
    from schemas import warehouse

    clickhouse.migrate(settings)
    client = clickhouse.connect(settings)
    build_block = _row_builder(warehouse)
    try:
        start = time.perf_counter()
        blocks = [build_block(normalized[i : i + block]) for i in range(0, len(normalized), block)]
        build = time.perf_counter() - start
        table, columns = warehouse.EVENTS_TABLE, warehouse.EVENT_COLUMNS
        start = time.perf_counter()
        for i, data in enumerate(blocks):
            # (the client's default database is settings.clickhouse_database: deploy.clickhouse.connect)
            client.raw_insert(
                table,
                columns,
                data,
                fmt=warehouse.INSERT_FORMAT,
                settings={**warehouse.INSERT_SETTINGS, "insert_deduplication_token": f"bench-{i}"},
            )
        elapsed = time.perf_counter() - start
        stored = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
    finally:
        client.close()
    n = len(normalized)
    if stored != n:
        raise RuntimeError(f"raw insert: {stored} rows stored of {n}")
    return {
        "rows": n,
        "block_rows": block,
        "method": "raw_insert(JSONEachRow: the envelopes' event lines)",
        "seconds": round(elapsed, 3),
        "rows_per_s": _rate(n, elapsed),
        "row_build_seconds": round(build, 3),
        "row_build_per_s": _rate(n, build),
    }
