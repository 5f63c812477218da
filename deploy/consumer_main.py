"""`flokit consumer`: one worker process of the consumer group.

Scale by starting more processes (on Kafka the group spreads partitions over
them). SIGTERM or SIGINT: the batch in hand is written and committed, then
the worker leaves the group. A failure the worker does not wait out (a bug,
see consumer/transient.py) ends the process with a traceback and a non-zero
status, the batch in hand uncommitted: it is delivered again to the next worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal

from . import components
from .settings import Settings

log = logging.getLogger("flokit.consumer")


def pin_malloc_mmap_threshold() -> None:
    """FLOKIT_MALLOC_PIN: keep glibc's malloc from raising its mmap threshold. By default, once a large block
    (a Kafka fetch answer of megabytes) is freed, glibc serves every later allocation below that size from
    its heaps, so the queue's records of tens of kilobytes, batch after batch and from several threads,
    fragment them and the peak RSS grows by about a batch (bench/README.md). Setting the threshold (at its
    default, 128 KiB) turns that adjustment off; the same as MALLOC_MMAP_THRESHOLD_=131072 in the
    environment. Not glibc: nothing to do."""
    M_MMAP_THRESHOLD = -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass


def main(settings: Settings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s consumer %(levelname)s %(message)s")
    if settings.malloc_pin:
        pin_malloc_mmap_threshold()
    worker = components.make_worker(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    log.info(
        "consuming %s as group %s",
        settings.topic if settings.kafka_bootstrap else "the local log",
        settings.consumer_group,
    )
    worker.run()
    log.info("stopped after writing %d events", worker.flushed_events)
    return 0
