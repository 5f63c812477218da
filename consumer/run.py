"""`flokit consumer`: one worker process of the consumer group.

Scale by starting more processes (on Kafka the group spreads partitions over
them). SIGTERM or SIGINT: the batch in hand is written and committed, then
the worker leaves the group.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal

from deploy import components
from deploy.settings import Settings
from schemas import warehouse

from .dead_letters import DeadLetters
from .identity import IdentityCache
from .worker import Worker
from .writer import BatchWriter

log = logging.getLogger("flokit.consumer")


def build_worker(settings: Settings) -> Worker:
    # A client for each thread that queries at once: identity lookups (the poll thread) run while writer
    # threads insert, and a clickhouse-connect client refuses concurrent queries in its session.
    lookups = warehouse.connect(settings)
    writers = [BatchWriter(warehouse.connect(settings), settings.clickhouse_database)
               for _ in range(max(1, settings.consumer_writes))]
    dlq = DeadLetters(components.make_dead_letter_publisher(settings), settings.topic,
                      settings.enqueue_timeout_seconds)
    identity = IdentityCache(lambda pairs: warehouse.resolve_links(lookups, settings.clickhouse_database, pairs))
    return Worker(settings, lambda on_revoke: components.make_subscriber(settings, on_revoke=on_revoke),
                  writers, dlq, identity)


def pin_malloc_mmap_threshold() -> None:
    """Keep glibc's malloc from raising its mmap threshold. By default, once a large block (a 4 MiB
    Kafka fetch response) is freed, glibc serves every later allocation below that size from its heaps,
    so the queue's ~90 KB records, batch after batch and from several threads, fragment them and the
    peak RSS grows by about a batch (bench/README.md: 305-336 → 260-285 MB with 100,000-event batches).
    Setting the threshold (at its default, 128 KiB) turns that adjustment off. Not glibc: nothing to do."""
    M_MMAP_THRESHOLD = -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def main(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s consumer %(levelname)s %(message)s")
    pin_malloc_mmap_threshold()
    worker = build_worker(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    log.info("consuming %s as group %s", settings.topic if settings.kafka_bootstrap else "the local log",
             settings.consumer_group)
    worker.run()
    log.info("stopped after writing %d events", worker.flushed_events)
    return 0
