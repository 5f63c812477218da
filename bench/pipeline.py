"""Pipeline phases: the consumer alone draining a pre-filled queue, and end to end under sustained batches.

Rows are counted with `SELECT count() FROM events` through clickhouse-connect on the warehouse under test
(every event id is unique, so count() is the number of events stored). Accepted events come from the load
generator's progress lines (the sum of the `accepted` fields of its 200 answers).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from . import loadgen, procs


class RowCounter:
    def __init__(self, settings):
        from deploy import clickhouse

        self._client = clickhouse.connect(settings)

    def count(self) -> int:
        return int(self._client.query("SELECT count() FROM events").result_rows[0][0])

    def close(self) -> None:
        self._client.close()


def _cpu(procs_by_role: dict[str, int]) -> dict[str, float | None]:
    return {role: procs.cpu_seconds(pid) for role, pid in procs_by_role.items()}


def _cpu_delta(before: dict, after: dict, seconds: float) -> dict:
    out = {}
    for role, value in after.items():
        if value is not None and before.get(role) is not None:
            out[role] = round((value - before[role]) / seconds, 3) if seconds > 0 else None
    return out


def consumer_alone(
    env: dict[str, str],
    settings,
    expected: int,
    log_dir: Path,
    watch: dict[str, int],
    timeout: float,
    name: str,
    command: tuple[str, ...] = ("deploy.cli", "consumer"),
) -> dict:
    """Start a consumer on a queue already holding `expected` events; time it until all are rows."""
    counter = RowCounter(settings)
    busy0 = procs.machine_cpu()
    start, wall_start = time.monotonic(), time.time()
    consumer = procs.start_consumer(env, log_dir, name=name, command=command)
    watch = {**watch, "consumer": consumer.pid}
    cpu0 = _cpu(watch)
    samples = []
    first_row_t = None
    done_t = None
    peak = None
    try:
        while time.monotonic() - start < timeout:
            if not consumer.alive():
                raise RuntimeError(f"consumer exited:\n{consumer.tail()}")
            rows = counter.count()
            t = time.monotonic() - start
            samples.append((round(t, 3), rows))
            if rows and first_row_t is None:
                first_row_t = t
            if rows >= expected:
                done_t = t
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        cpu1 = _cpu(watch)
        busy1 = procs.machine_cpu()
        peak = procs.peak_rss_mb(consumer.pid)
    finally:
        consumer.stop()
        counter.close()
    if done_t is None:
        raise RuntimeError(
            f"{name}: {samples[-1][1] if samples else 0} of {expected} rows after {timeout:.0f} s"
        )
    # The clock of the figure starts when the consumer is ready to read (partitions assigned / log opened),
    # read from its own log, so interpreter start-up and the group join are not counted.
    ready_t = _ready_at(consumer, wall_start, start)
    return {
        "events": expected,
        "seconds_from_start": round(done_t, 3),
        "events_per_s_incl_startup": round(expected / done_t, 1),
        "ready_at_s": None if ready_t is None else round(ready_t, 3),
        "first_rows_at_s": round(first_row_t, 3) if first_row_t is not None else None,
        "events_per_s": round(expected / (done_t - (ready_t or 0.0)), 1),
        "events_per_s_steady": _steady_rate(samples, expected),
        "cpu_cores_used": _cpu_delta(cpu0, cpu1, elapsed),
        "machine_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 2, 2),
        "consumer_peak_rss_mb": peak,
        "samples": samples,
    }


def _steady_rate(samples: list[tuple[float, int]], expected: int) -> float | None:
    """Rows/s from the sample where 10 % of the backlog was visible to the one where 90 % was: the drain rate
    with the pipeline full, without its filling (the first batch polled before any insert starts) and its
    emptying (the last insert alone)."""
    first = next(((t, rows) for t, rows in samples if rows >= 0.1 * expected), None)
    last = next(((t, rows) for t, rows in samples if rows >= 0.9 * expected), None)
    if first is None or last is None or last[0] <= first[0]:
        return None
    return round((last[1] - first[1]) / (last[0] - first[0]), 1)


def _ready_at(consumer, wall_start: float, mono_start: float) -> float | None:
    """Seconds after start at which the consumer logged that it can read: Kafka's partition assignment, or
    the local log's `consuming` line."""
    import re
    from datetime import datetime

    for line in consumer.log_path.read_text(errors="replace").splitlines():
        if re.search(r"assigned partitions \[\d", line) or "consuming the local log" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return max(0.0, stamp - wall_start)
    return None


def end_to_end(
    env: dict[str, str],
    settings,
    api_url: str,
    bodies: str,
    key: str,
    *,
    seconds: float,
    conns: int,
    log_dir: Path,
    watch: dict[str, int],
    name: str,
    drain_timeout: float,
    open_rate: float | None = None,
) -> dict:
    """Sustained 1,000-event batches for `seconds` with a consumer running; rows and lag every second."""
    counter = RowCounter(settings)
    consumer = procs.start_consumer(env, log_dir, name=name + "-consumer")
    watch = {**watch, "consumer": consumer.pid}
    # Let the consumer come up (imports, group join) before the clock starts.
    deadline = time.monotonic() + 30
    while _ready_at(consumer, 0.0, 0.0) is None and time.monotonic() < deadline:
        if not consumer.alive():
            raise RuntimeError(f"consumer exited:\n{consumer.tail()}")
        time.sleep(0.05)
    sample_counter = RowCounter(settings)  # the sampler thread's own client (one query at a time per client)

    progress = {"t": None, "events": 0, "first_t": None, "non200": 0, "errors": 0}
    lock = threading.Lock()

    def on_progress(p):
        with lock:
            if progress["first_t"] is None:
                progress["first_t"] = p["t"]
            progress.update(t=p["t"], events=p["events"], non200=p["non200"], errors=p["errors"])

    timeline = []  # (seconds since first POST, accepted, rows, cpu cores by role over the last second)
    stop = threading.Event()
    result_box = {}
    sampler_error = []

    def sampler():
        last_cpu, last_t = _cpu(watch), time.monotonic()
        while not stop.is_set():
            time.sleep(max(0.0, 1.0 - (time.monotonic() - last_t)))
            try:
                rows = sample_counter.count()
            except Exception as exc:  # noqa: BLE001
                sampler_error.append(repr(exc))
                continue
            now = time.monotonic()
            cpu = _cpu(watch)
            with lock:
                first = progress["first_t"]
                accepted = progress["events"]
            if first is not None:
                timeline.append(
                    {
                        "t": round(now - first, 3),
                        "accepted": accepted,
                        "rows": rows,
                        "lag": accepted - rows,
                        "cpu": _cpu_delta(last_cpu, cpu, now - last_t),
                    }
                )
            last_cpu, last_t = cpu, now

    thread = threading.Thread(target=sampler, daemon=True)
    busy0 = procs.machine_cpu()
    thread.start()
    try:
        result_box["load"] = loadgen.spawn(
            api_url,
            "/v1/batch/events",
            bodies,
            key,
            seconds=seconds,
            conns=conns,
            open_rate=open_rate,
            on_progress=on_progress,
        )
        load_end = time.monotonic()
        accepted_total = result_box["load"]["events"]
        with lock:  # the last progress line may predate the last answers
            progress["events"] = accepted_total
        # Drain: until every accepted event is a row.
        done_t = None
        while time.monotonic() - load_end < drain_timeout:
            rows = counter.count()
            if rows >= accepted_total:
                done_t = time.monotonic()
                break
            if not consumer.alive():
                raise RuntimeError(f"consumer exited:\n{consumer.tail()}")
            time.sleep(0.1)
        stop.set()
        thread.join(5)
        busy1 = procs.machine_cpu()
        consumer_peak = procs.peak_rss_mb(consumer.pid)
    finally:
        stop.set()
        thread.join(5)
        consumer.stop()
        counter.close()
        sample_counter.close()
    load = result_box["load"]
    first = progress["first_t"]
    rows_final = timeline[-1]["rows"] if timeline else 0
    out = {
        "seconds_of_load": seconds,
        "connections": conns,
        "offered_events_per_s": open_rate and open_rate * 1000,
        "accepted_events": accepted_total,
        "non200": load["statuses"],
        "errors": load["errors"],
        "accepted_events_per_s": load["events_per_s"],
        "request_latency_ms": load["latency_ms"],
        "generator_cpu_share": load["generator_cpu_share"],
        "all_visible": done_t is not None,
        "machine_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * 2, 2),
        "consumer_peak_rss_mb": consumer_peak,
        "sampler_errors": sampler_error[:3],
    }
    if done_t is not None and first is not None:
        span = done_t - first
        out["seconds_first_post_to_all_visible"] = round(span, 3)
        out["events_per_s"] = round(accepted_total / span, 1)
        out["drain_after_load_s"] = round(done_t - load_end, 3)
    else:
        out["events_per_s"] = None
        out["rows_when_gave_up"] = rows_final
    in_load = [p for p in timeline if p["t"] <= seconds]
    if in_load:
        lags = [p["lag"] for p in in_load]
        out["lag_max"] = max(lags)
        out["lag_at_end_of_load"] = in_load[-1]["lag"]
        half = [p for p in in_load if p["t"] >= seconds / 2]
        if len(half) >= 2:
            dt = half[-1]["t"] - half[0]["t"]
            out["lag_growth_per_s_second_half"] = (
                round((half[-1]["lag"] - half[0]["lag"]) / dt, 1) if dt else None
            )
            out["rows_per_s_second_half"] = (
                round((half[-1]["rows"] - half[0]["rows"]) / dt, 1) if dt else None
            )
            out["accepted_per_s_second_half"] = (
                round((half[-1]["accepted"] - half[0]["accepted"]) / dt, 1) if dt else None
            )
        # Mean CPU cores per process over the load.
        roles = {}
        for p in in_load:
            for role, v in p["cpu"].items():
                if v is not None:
                    roles.setdefault(role, []).append(v)
        out["cpu_cores_used_during_load"] = {r: round(sum(v) / len(v), 3) for r, v in roles.items()}
    out["timeline"] = timeline
    return out
