"""ingest_api.enqueue: the events of requests enqueued together share records, and each keeps its own
workspace, partition and received_at; on the real local log, every event of concurrent requests arrives."""

from __future__ import annotations

import threading

from deploy.queue.local_log import LocalLogPublisher, LocalLogSubscriber
from ingest_api.enqueue import Enqueuer, records_for
from schemas import envelope

PARTITIONS = 4


def event(i: int, anonymous_id: str) -> dict:
    return {
        "event_id": f"evt_{i}",
        "event": "paywall_viewed",
        "user_id": None,
        "anonymous_id": anonymous_id,
        "timestamp": "2024-03-15T14:22:00.000Z",
        "properties": {"i": i},
    }


def test_requests_share_one_record_per_workspace_and_partition():
    devices = [f"dev_{n}" for n in range(8)]
    requests = [
        ("acme", "2026-11-26T10:00:00.001Z", [event(i, devices[i]) for i in range(0, 4)]),
        ("other", "2026-11-26T10:00:00.002Z", [event(i, devices[i % 8]) for i in range(4, 8)]),
        ("acme", "2026-11-26T10:00:00.003Z", [event(i, devices[i % 8]) for i in range(8, 16)]),
    ]
    records = records_for(requests, PARTITIONS)
    seen = []
    for record in records:
        env = envelope.decode(record.value)
        docs = env.documents()
        assert {envelope.partition_for(d["anonymous_id"], PARTITIONS) for d in docs} == {record.partition}
        assert {d["workspace"] for d in docs} == {env.workspace}
        assert env.received_at == docs[0]["received_at"]  # a header carries its first event's
        seen += [(d["workspace"], d["event_id"], d["received_at"]) for d in docs]
    # One record per (workspace, partition) used, not one per request.
    assert len(records) == len(
        {
            (w, envelope.partition_for(e["anonymous_id"], PARTITIONS))
            for w, _, events in requests
            for e in events
        }
    )
    # Every event once, with its own request's received_at, in request order within its record.
    expected = [(w, e["event_id"], at) for w, at, events in requests for e in events]
    assert sorted(seen) == sorted(expected)
    for record in records:
        ids = [d["event_id"] for d in envelope.decode(record.value).documents()]
        assert ids == sorted(ids, key=lambda i: int(i.split("_")[1]))


def test_concurrent_requests_all_arrive_on_the_local_log(tmp_path):
    publisher = LocalLogPublisher(tmp_path / "queue.sqlite3", PARTITIONS, timeout=10)
    enqueuer = Enqueuer(publisher, timeout=10)
    threads = [
        threading.Thread(
            target=enqueuer.publish,
            args=("acme", f"2026-11-26T10:00:00.{n:03d}Z", [event(n, f"dev_{n % 5}")]),
        )
        for n in range(60)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    subscriber = LocalLogSubscriber(tmp_path / "queue.sqlite3", "test")
    try:
        messages = []
        while batch := subscriber.poll(1000, timeout=0.5):
            messages += batch
    finally:
        subscriber.close()
        publisher.close()
    docs = [d for m in messages for d in envelope.decode(m.value).documents()]
    assert sorted(int(d["event_id"][4:]) for d in docs) == list(range(60))
    assert all(d["received_at"] == f"2026-11-26T10:00:00.{d['properties']['i']:03d}Z" for d in docs)
