"""Turning a run's results into the stdout table, the JSON file and the end-to-end plot."""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = {
    "batch_events_per_s": 50_000,
    "single_requests_per_s": 3_000,
    "single_p99_ms": 50,
    "e2e_events_per_s": 25_000,
    "consumer_events_per_s": 100_000,
    "frontdoor_worker_rss_mb": 150,
    "consumer_rss_mb": 300,
}


def _get(d, *path):
    for p in path:
        if d is None:
            return None
        d = d.get(p) if isinstance(d, dict) else None
    return d


def _fmt(v, unit=""):
    if v is None:
        return "—"
    if isinstance(v, float) and v < 100:
        text = f"{v:,.1f}" if v >= 10 else f"{v:,.2f}"
    else:
        text = f"{v:,.0f}"
    return text + unit


def rows(r: dict) -> list[tuple]:
    """(figure, value, target text, vs-target, limit name, limit value, ratio) per line of the table."""
    out = []
    lim = r.get("limits", {})
    fd = r.get("frontdoor_kafka", {})
    noop = r.get("http_ceiling", {})
    workers = r.get("config", {}).get("api_workers", 2)
    val = _get(lim, "validation", "events_per_s")
    raw_kafka = _get(lim, "kafka_produce", "events_per_s")
    raw_kafka_single = _get(lim, "kafka_produce_single", "records_per_s")
    raw_ch = _get(lim, "clickhouse_insert", "rows_per_s")
    raw_local = _get(lim, "local_log_append", "events_per_s")
    pperf = _get(lim, "producer_performance")

    def line(name, value, target=None, higher=True, limits=(), unit=""):
        tgt = None
        if target is not None and value is not None:
            tgt = (
                f"{value / target:.2f}x"
                if higher
                else ("ok" if value <= target else f"{value / target:.2f}x over")
            )
        target_text = None if target is None else (f"≥ {target:,}" if higher else f"≤ {target:,}") + unit
        first = True
        for lname, lvalue in limits or [(None, None)]:
            ratio = f"{value / lvalue:.2f}" if value is not None and lvalue else None
            out.append(
                (
                    name if first else "",
                    _fmt(value, unit) if first else "",
                    (target_text or "") if first else "",
                    (tgt or "") if first else "",
                    lname or "",
                    _fmt(lvalue),
                    ratio or "",
                )
            )
            first = False

    pperf_events = None
    if pperf and pperf.get("records_per_s") and _get(lim, "kafka_produce", "records"):
        per_record = lim["kafka_produce"]["events"] / lim["kafka_produce"]["records"]
        pperf_events = pperf["records_per_s"] * per_record
    b = _get(fd, "batch_saturation")
    line(
        "1. batch endpoint, events/s (1,000-event requests)",
        _get(b, "events_per_s"),
        TARGETS["batch_events_per_s"],
        limits=[
            ("raw Kafka produce, events/s", raw_kafka),
            ("Kafka's Java ProducerPerformance, events/s equiv.", pperf_events),
            ("HTTP ceiling (no-op, same bodies), events/s", _get(noop, "batch_wrk", "events_per_s")),
            (f"validation, events/s x {workers} workers", val and val * workers),
        ],
    )
    line("   batch p50 / p99 latency, ms", None)
    out[-1] = (
        out[-1][0],
        f"{_fmt(_get(b, 'latency_ms', 'p50'))} / {_fmt(_get(b, 'latency_ms', 'p99'))}",
        "",
        "",
        "",
        "",
        "",
    )
    s = _get(fd, "single_saturation")
    line(
        "2. single-event endpoint, requests/s",
        _get(s, "requests_per_s"),
        TARGETS["single_requests_per_s"],
        limits=[
            ("HTTP ceiling (no-op), requests/s", _get(noop, "single_wrk", "requests_per_s")),
            ("Flask no-op, requests/s", _get(noop, "single_flask_wrk", "requests_per_s")),
            ("raw Kafka produce, 1-event records/s", raw_kafka_single),
            (f"validation, events/s x {workers} workers", val and val * workers),
        ],
    )
    workers = {k: v for k, v in (_get(s, "cpu_cores_used") or {}).items() if "worker" in k}
    if workers:
        out.append(
            (
                "   CPU cores per front-door worker (single)",
                ", ".join(f"{v:.2f}" for v in workers.values()),
                "",
                "balanced" if _get(s, "workers_balanced") else "UNBALANCED",
                "",
                "",
                "",
            )
        )
    o = _get(fd, "single_open_loop")
    if o:
        line(
            f"   open loop at {o.get('offered_rate', 0):,.0f} req/s: p99 latency, ms",
            _get(o, "latency_ms", "p99"),
            TARGETS["single_p99_ms"],
            higher=False,
            limits=[
                (
                    "same rate on the no-op endpoint, p99 ms",
                    _get(noop, "single_open_loop", "latency_ms", "p99"),
                )
            ],
        )
        out.append(
            (
                "   open loop p50 / p99 / p999, ms",
                " / ".join(_fmt(_get(o, "latency_ms", k)) for k in ("p50", "p99", "p999")),
                "",
                "",
                "no-op p50 / p99 / p999",
                " / ".join(
                    _fmt(_get(noop, "single_open_loop", "latency_ms", k)) for k in ("p50", "p99", "p999")
                ),
                "",
            )
        )
    for lower in _get(fd, "single_open_loop_more") or []:
        line(
            f"   open loop at {lower.get('offered_rate', 0):,.0f} req/s: p99 latency, ms",
            _get(lower, "latency_ms", "p99"),
            TARGETS["single_p99_ms"],
            higher=False,
        )
        out.append(
            (
                "   open loop p50 / p99 / p999, ms",
                " / ".join(_fmt(_get(lower, "latency_ms", k)) for k in ("p50", "p99", "p999")),
                "",
                "",
                "",
                "",
                "",
            )
        )
    for key, label, raw_queue, raw_name in (
        ("e2e_kafka", "3. end to end (Kafka), events/s", raw_kafka, "raw Kafka produce, events/s"),
        ("e2e_local", "5. end to end (local log), events/s", raw_local, "raw local-log append, events/s"),
    ):
        e = r.get(key)
        if not e:
            continue
        line(
            label,
            _get(e, "events_per_s"),
            TARGETS["e2e_events_per_s"],
            limits=[
                (raw_name, raw_queue),
                ("raw ClickHouse insert, rows/s", raw_ch),
                (
                    "consumer alone on this queue, events/s",
                    _get(r, "consumer_kafka" if key == "e2e_kafka" else "consumer_local", "events_per_s"),
                ),
            ],
        )
        out.append(
            (
                "   accepted/s; rows/s and lag growth/s (2nd half); max lag",
                f"{_fmt(_get(e, 'accepted_events_per_s'))}; {_fmt(_get(e, 'rows_per_s_second_half'))}, "
                f"{_fmt(_get(e, 'lag_growth_per_s_second_half'))}; {_fmt(_get(e, 'lag_max'))}",
                "bounded lag",
                "bounded" if _bounded(e) else "GROWING",
                "",
                "",
                "",
            )
        )
    t = r.get("e2e_kafka_at_target")
    if t:
        line(
            f"3. end to end (Kafka) at {_fmt(t.get('offered_events_per_s'))} events/s offered "
            "(open loop), events/s",
            _get(t, "events_per_s"),
            TARGETS["e2e_events_per_s"],
            limits=[("consumer alone on this queue, events/s", _get(r, "consumer_kafka", "events_per_s"))],
        )
        out.append(
            (
                "   accepted/s; rows/s and lag growth/s (2nd half); max lag",
                f"{_fmt(_get(t, 'accepted_events_per_s'))}; {_fmt(_get(t, 'rows_per_s_second_half'))}, "
                f"{_fmt(_get(t, 'lag_growth_per_s_second_half'))}; {_fmt(_get(t, 'lag_max'))}",
                "bounded lag",
                "bounded" if _bounded(t) else "GROWING",
                "",
                "",
                "",
            )
        )
    for key, label in (
        ("consumer_kafka", "4. consumer alone (Kafka), events/s"),
        ("consumer_local", "5. consumer alone (local log), events/s"),
    ):
        c = r.get(key)
        if not c:
            continue
        line(
            label,
            _get(c, "events_per_s"),
            TARGETS["consumer_events_per_s"],
            limits=[("raw ClickHouse insert, rows/s", raw_ch)],
        )
        line(
            "   the same with the pipeline full (10 % → 90 % of the rows)",
            _get(c, "events_per_s_steady"),
            TARGETS["consumer_events_per_s"],
            limits=[("raw ClickHouse insert, rows/s", raw_ch)],
        )
    cap = _get(noop, "loadgen_closed_capacity")
    if cap:
        oc = _get(noop, "loadgen_open_capacity")
        out.append(
            (
                "   load generator (bench/loadgen.c) on the no-op: closed-loop req/s; open-loop rate, p99 ms",
                f"{_fmt(cap.get('requests_per_s'))}; {_fmt(_get(oc, 'offered_rate'))}, "
                f"{_fmt(_get(oc, 'latency_ms', 'p99'))}",
                "",
                "",
                "",
                "",
                "",
            )
        )
    lb = _get(r, "frontdoor_local", "batch_saturation")
    if lb:
        line(
            "   batch endpoint on the local log, events/s",
            _get(lb, "events_per_s"),
            TARGETS["batch_events_per_s"],
            limits=[("raw local-log append, events/s", raw_local)],
        )
    rss = r.get("peak_rss_mb", {})
    for role, value in rss.items():
        target = None
        if role.startswith("frontdoor worker"):
            target = TARGETS["frontdoor_worker_rss_mb"]
        elif role.startswith("consumer"):
            target = TARGETS["consumer_rss_mb"]
        line(f"6. peak RSS {role}, MB", value, target, higher=False)
    if pperf and "records_per_s" in pperf:
        out.append(
            (
                "   (Kafka ProducerPerformance, Java, same record size)",
                f"{pperf['records_per_s']:,.0f} rec/s = {pperf['mb_per_s']:,.0f} MB/s",
                "",
                "",
                "",
                "",
                "",
            )
        )
    return out


def _bounded(e: dict) -> bool:
    growth = e.get("lag_growth_per_s_second_half")
    rate = e.get("accepted_per_s_second_half") or e.get("accepted_events_per_s") or 0
    return growth is not None and rate > 0 and growth <= 0.05 * rate


def table(r: dict) -> str:
    header = ("figure", "measured", "target", "vs target", "limit (same run)", "limit", "figure/limit")
    body = rows(r)
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    lines = [
        " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def markdown_table(r: dict) -> str:
    header = ("figure", "measured", "target", "vs target", "limit (same run)", "limit", "figure/limit")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(r):
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> Path | None:
    runs = [
        (k, r[k])
        for k in ("e2e_kafka", "e2e_local", "e2e_kafka_at_target")
        if r.get(k) and r[k].get("timeline")
    ]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(runs), figsize=(6.5 * len(runs), 7), squeeze=False, sharex="col")
    for col, (key, e) in enumerate(runs):
        tl = e["timeline"]
        t = [p["t"] for p in tl]
        acc_rate, row_rate = [], []
        for i, p in enumerate(tl):
            if i == 0:
                acc_rate.append(p["accepted"] / p["t"] if p["t"] else 0)
                row_rate.append(p["rows"] / p["t"] if p["t"] else 0)
            else:
                dt = p["t"] - tl[i - 1]["t"]
                acc_rate.append((p["accepted"] - tl[i - 1]["accepted"]) / dt if dt else 0)
                row_rate.append((p["rows"] - tl[i - 1]["rows"]) / dt if dt else 0)
        ax = axes[0][col]
        window = 10
        smooth = []
        for i, p in enumerate(tl):
            j = max(0, i - window)
            dt = p["t"] - (tl[j]["t"] if i else 0)
            smooth.append((p["rows"] - (tl[j]["rows"] if i else 0)) / dt if dt else 0)
        ax.plot(t, [x / 1000 for x in acc_rate], label="accepted by the front door (per second)")
        ax.plot(
            t,
            [x / 1000 for x in row_rate],
            color="tab:orange",
            alpha=0.3,
            lw=0.8,
            label="rows visible in ClickHouse (per second: one insert per consumer batch)",
        )
        ax.plot(t, [x / 1000 for x in smooth], color="tab:orange", lw=2, label="rows visible, 10 s average")
        ax.axhline(TARGETS["e2e_events_per_s"] / 1000, color="grey", ls="--", lw=0.8, label="target 25k/s")
        ax.axvline(e["seconds_of_load"], color="black", ls=":", lw=0.8)
        ax.set_ylabel("thousand events/s")
        title = {
            "e2e_kafka": "Kafka, saturated",
            "e2e_local": "local log, saturated",
            "e2e_kafka_at_target": f"Kafka, {(e.get('offered_events_per_s') or 0):,.0f} events/s offered",
        }[key]
        ax.set_title(f"{title}: end to end {(e.get('events_per_s') or 0):,.0f} events/s", fontsize=10)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ax.plot(t, [p["lag"] / 1000 for p in tl], color="tab:red")
        ax.axvline(e["seconds_of_load"], color="black", ls=":", lw=0.8, label="load stops")
        ax.set_ylabel("consumer lag, thousand events")
        ax.set_xlabel("seconds since the first POST")
        ax.legend(fontsize=8)
    fig.suptitle(f"FloKit Ingest end to end, {r.get('mode')} run {r.get('run_id')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(r: dict, path: Path) -> Path:
    path.write_text(json.dumps(r, indent=2, sort_keys=False, default=str) + "\n")
    return path
