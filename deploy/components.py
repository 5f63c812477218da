"""Which implementation of each interface a process uses, chosen from the
settings at start-up, in this one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.queue import OnRevoke, Publisher, Subscriber

from .settings import Settings

if TYPE_CHECKING:
    from flask import Flask

    from consumer.config import ConsumerConfig
    from consumer.worker import Worker
    from ingest_api.config import FrontDoorConfig
    from ingest_api.state.base import FrontDoorState

# Each part's modules are imported by the function that builds it: a consumer process never loads Flask, a
# front door never loads the ClickHouse client.


def make_publisher(settings: Settings) -> Publisher:
    if settings.embedded_queue:
        from .queue.local_log import LocalLogPublisher

        return LocalLogPublisher(
            settings.data_dir / "queue.sqlite3", settings.partitions, settings.enqueue_timeout_seconds
        )
    from .queue.kafka_queue import KafkaPublisher

    return KafkaPublisher(
        settings.kafka_bootstrap,
        settings.topic,
        settings.enqueue_timeout_seconds,
        linger_ms=settings.kafka_linger_ms,
    )


def make_dead_letter_publisher(settings: Settings) -> Publisher:
    """Where the consumer sends what it cannot process: the DLQ topic, or a
    local log of its own (`dead_letters.sqlite3`) in embedded mode."""
    if settings.embedded_queue:
        from .queue.local_log import LocalLogPublisher

        return LocalLogPublisher(
            settings.data_dir / "dead_letters.sqlite3", 1, settings.enqueue_timeout_seconds
        )
    from .queue.kafka_queue import KafkaPublisher

    return KafkaPublisher(settings.kafka_bootstrap, settings.dlq_topic, settings.enqueue_timeout_seconds)


def make_subscriber(settings: Settings, on_revoke: OnRevoke | None = None) -> Subscriber:
    if settings.embedded_queue:
        from .queue.local_log import LocalLogSubscriber

        return LocalLogSubscriber(
            settings.data_dir / "queue.sqlite3", settings.consumer_group, on_revoke=on_revoke
        )
    from .queue.kafka_queue import KafkaSubscriber

    return KafkaSubscriber(
        settings.kafka_bootstrap,
        settings.topic,
        settings.consumer_group,
        on_revoke=on_revoke,
        large_reads=settings.kafka_large_reads,
    )


def make_state(settings: Settings) -> FrontDoorState:
    if settings.embedded_state:
        from ingest_api.state.sqlite_state import SqliteState

        return SqliteState(settings.data_dir / "frontdoor.sqlite3")
    from ingest_api.state.redis_state import RedisState

    return RedisState(settings.redis_url)


def frontdoor_config(settings: Settings) -> FrontDoorConfig:
    from ingest_api.config import FrontDoorConfig

    return FrontDoorConfig(
        rate_limit_per_minute=settings.rate_limit_per_minute,
        enqueue_timeout_seconds=settings.enqueue_timeout_seconds,
        max_body_bytes=settings.max_body_bytes,
    )


def make_app(settings: Settings | None = None) -> Flask:
    """The front door's WSGI app on the configured queue and state (gunicorn's `wsgi_app`, called in each
    worker after the fork)."""
    from ingest_api import create_app

    settings = settings or Settings.from_env()
    return create_app(
        frontdoor_config(settings), publisher=make_publisher(settings), state=make_state(settings)
    )


def consumer_config(settings: Settings) -> ConsumerConfig:
    from consumer.config import ConsumerConfig

    return ConsumerConfig(
        batch_max_events=settings.batch_max_events,
        batch_max_seconds=settings.batch_max_seconds,
        writes=max(1, settings.consumer_writes),
        database=settings.clickhouse_database,
        topic=settings.topic,
        dead_letter_timeout_seconds=settings.enqueue_timeout_seconds,
    )


def make_worker(settings: Settings) -> Worker:
    """A consumer worker on the configured queue and warehouse."""
    from consumer.dead_letters import DeadLetters
    from consumer.identity import IdentityCache, resolve_links
    from consumer.worker import Worker
    from consumer.writer import BatchWriter

    from .clickhouse import connect

    config = consumer_config(settings)
    # A client for each thread that queries at once: identity lookups (the poll thread) run while writer
    # threads insert, and a clickhouse-connect client refuses concurrent queries in its session.
    lookups = connect(settings)
    writers = [BatchWriter(connect(settings), config.database) for _ in range(config.writes)]
    dead_letters = DeadLetters(
        make_dead_letter_publisher(settings), config.topic, config.dead_letter_timeout_seconds
    )
    identity = IdentityCache(lambda pairs: resolve_links(lookups, config.database, pairs))
    return Worker(
        config, lambda on_revoke: make_subscriber(settings, on_revoke), writers, dead_letters, identity
    )
