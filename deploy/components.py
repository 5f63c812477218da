"""Which implementation of each interface a process uses, chosen from the
settings at start-up, in this one place."""
from __future__ import annotations

from schemas.queue import OnRevoke, Publisher, Subscriber

from .settings import Settings


def make_publisher(settings: Settings) -> Publisher:
    if settings.embedded_queue:
        from .queue.local_log import LocalLogPublisher
        return LocalLogPublisher(settings.data_dir / "queue.sqlite3", settings.partitions,
                                 settings.enqueue_timeout_seconds)
    from .queue.kafka_queue import KafkaPublisher
    return KafkaPublisher(settings.kafka_bootstrap, settings.topic, settings.enqueue_timeout_seconds,
                          linger_ms=settings.kafka_linger_ms)


def make_dead_letter_publisher(settings: Settings) -> Publisher:
    """Where the consumer sends what it cannot process: the DLQ topic, or a
    local log of its own (`dead_letters.sqlite3`) in embedded mode."""
    if settings.embedded_queue:
        from .queue.local_log import LocalLogPublisher
        return LocalLogPublisher(settings.data_dir / "dead_letters.sqlite3", 1, settings.enqueue_timeout_seconds)
    from .queue.kafka_queue import KafkaPublisher
    return KafkaPublisher(settings.kafka_bootstrap, settings.dlq_topic, settings.enqueue_timeout_seconds)


def make_subscriber(settings: Settings, on_revoke: OnRevoke | None = None) -> Subscriber:
    if settings.embedded_queue:
        from .queue.local_log import LocalLogSubscriber
        return LocalLogSubscriber(settings.data_dir / "queue.sqlite3", settings.consumer_group, on_revoke=on_revoke)
    from .queue.kafka_queue import KafkaSubscriber
    return KafkaSubscriber(settings.kafka_bootstrap, settings.topic, settings.consumer_group, on_revoke=on_revoke)


def make_state(settings: Settings):
    if settings.embedded_state:
        from ingest_api.state.sqlite_state import SqliteState
        return SqliteState(settings.data_dir / "frontdoor.sqlite3")
    from ingest_api.state.redis_state import RedisState
    return RedisState(settings.redis_url)
