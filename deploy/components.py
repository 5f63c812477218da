"""Which implementation of each interface a process uses, chosen from the
settings at start-up, in this one place."""
from __future__ import annotations

from .queue.base import Publisher
from .settings import Settings


def make_publisher(settings: Settings) -> Publisher:
    if settings.embedded_queue:
        raise SystemExit("the embedded queue is not available yet: set FLOKIT_KAFKA_BOOTSTRAP to a Kafka broker")
    from .queue.kafka_queue import KafkaPublisher
    return KafkaPublisher(settings.kafka_bootstrap, settings.topic, settings.enqueue_timeout_seconds)


def make_state(settings: Settings):
    if settings.embedded_state:
        from ingest_api.state.sqlite_state import SqliteState
        return SqliteState(settings.data_dir / "frontdoor.sqlite3")
    from ingest_api.state.redis_state import RedisState
    return RedisState(settings.redis_url)
