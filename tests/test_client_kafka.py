"""The Python client against the production front door (Kafka + Redis): exactly once from many threads,
through a broker stopped and restarted mid-run, and slowed but lossless on a rate-limited workspace. Arrival
is checked in the topic itself, by event."""

from __future__ import annotations

import threading
import time

import pytest
from kafka.admin import KafkaAdminClient

from flokit_client import Client

from .services import api_server, read_events, run_script, unique, wait_until
from .test_client_embedded import PROPS, arrivals, assert_exactly_once, track_from_threads


@pytest.fixture(scope="module")
def server(production_env):
    with api_server(production_env, workers=2) as srv:
        yield srv


def wait_for_leaders(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        wait_until(
            lambda: all(p["leader_id"] >= 0 for p in admin.describe_topics([topic])[0]["partitions"]),
            timeout=60,
            message=f"leaders for {topic}",
        )
    finally:
        admin.close()


def topic_arrivals(kafka_bootstrap: str, topic: str, run: str) -> dict[int, list[str]]:
    return arrivals(read_events(kafka_bootstrap, topic), run)


def test_100k_events_from_8_threads_arrive_exactly_once(server, workspace_key, kafka_bootstrap, topic):
    _, key = workspace_key(rate_limit_per_minute=100_000)
    run = unique("run")
    client = Client(key, server.url, on_full="block", max_queue_size=2_000)
    track_from_threads(client, run, threads=8, per_thread=12_500)
    assert client.flush(timeout=120)
    client.close()
    stats = client.stats()
    assert (stats.delivered, stats.rejected, stats.failed, stats.dropped) == (100_000, 0, 0, 0), stats
    assert_exactly_once(topic_arrivals(kafka_bootstrap, topic, run), range(100_000))


def test_broker_stopped_mid_run_then_restarted_still_exactly_once(
    server, workspace_key, kafka_bootstrap, topic
):
    """Stops the session's broker (KAFKA_PORT) while events flow and starts it again, in a finally, whatever
    happens: in CI the other tests share this broker."""
    _, key = workspace_key(rate_limit_per_minute=100_000)
    run = unique("run")
    client = Client(key, server.url, on_full="block", max_batch_size=200, flush_interval=0.2)
    total = 10_000
    tracked = []

    def produce():  # a steady stream (~1,000 events/s) for the whole outage
        for seq in range(total):
            client.track(
                "paywall_viewed", user_id=f"usr_{seq % 97}", properties={**PROPS, "run": run, "seq": seq}
            )
            tracked.append(seq)
            if seq % 100 == 99:
                time.sleep(0.1)

    producer = threading.Thread(target=produce)
    port = kafka_bootstrap.rsplit(":", 1)[1]
    producer.start()
    try:
        while len(tracked) < 2_000:
            time.sleep(0.1)
        run_script("kafka.sh", "stop", KAFKA_PORT=port)
        time.sleep(5)  # events keep coming; the front door answers 503 with Retry-After
    finally:
        run_script("kafka.sh", "start", KAFKA_PORT=port)  # waits until the broker answers metadata requests
        wait_for_leaders(kafka_bootstrap, topic)  # so the modules after this one find a serving broker too
        producer.join()
    assert client.flush(timeout=240)
    client.close()
    stats = client.stats()
    assert (stats.delivered, stats.rejected, stats.failed, stats.dropped) == (total, 0, 0, 0), stats
    assert stats.retries >= 1, stats  # the outage was seen
    assert_exactly_once(topic_arrivals(kafka_bootstrap, topic, run), range(total), same_id_copies=True)


def test_a_rate_limited_workspace_slows_the_client_and_loses_nothing(
    server, workspace_key, kafka_bootstrap, topic
):
    """30 requests a minute: a burst of 30, then one every 2 s. 35 batches of 10 events."""
    _, key = workspace_key(rate_limit_per_minute=30)
    run = unique("run")
    client = Client(key, server.url, max_batch_size=10)
    started = time.monotonic()
    for seq in range(350):
        client.track("paywall_viewed", user_id="usr_rl", properties={"run": run, "seq": seq})
    assert client.flush(timeout=120)
    elapsed = time.monotonic() - started
    client.close()
    stats = client.stats()
    assert (stats.delivered, stats.failed, stats.dropped) == (350, 0, 0), stats
    assert elapsed >= 8, elapsed  # the 5 batches past the burst waited their turns (2 s each)
    # Honouring Retry-After, a batch is refused about once before its turn (twice if a retry lands a hair
    # early); retrying on a short backoff instead would be refused several times per batch.
    assert 1 <= stats.rate_limited <= 10, stats
    assert_exactly_once(topic_arrivals(kafka_bootstrap, topic, run), range(350))
