"""The queue on Apache Kafka (production), through kafka-python."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import CommitFailedError, IllegalStateError, KafkaError, TopicAlreadyExistsError

from schemas.queue import CommitFailed, Message, OnRevoke, Publisher, QueueUnavailable, Record, Subscriber

log = logging.getLogger(__name__)

# A producer is built at most this often: while the broker is away, a worker tries again once a second and
# answers the publishes in between at once (QueueUnavailable) instead of connecting for each.
REBUILD_SECONDS = 1.0
# ready() takes a publish acknowledged this recently as proof of delivery, without asking the broker.
DELIVERED_RECENTLY_SECONDS = 1.0


class KafkaPublisher(Publisher):
    """Publishes with acks=all: a publish returns once every in-sync replica has its records.

    kafka-python's idempotent producer is not used, because in 3.0.12 it can break for good
    in an outage. When a batch that was already sent once (retried after a lost connection)
    expires (delivery_timeout_ms), the Sender calls TransactionManager.reset_producer_id()
    (sender.py, _send_producer_data). That clears the producer id and the sequence numbers
    but leaves the manager in state READY, and init_producer_id(), which the Sender then calls
    on every loop because there is no producer id, asks the broker for a new one only in state
    UNINITIALIZED (transaction_manager.py), which no transition leads back to. Without a
    producer id, Sender.run_once() returns before draining or expiring anything: every record
    waits forever and every publish times out, until the process restarts. Nor can such a
    producer be closed through the public API: close() first waits for its records, which
    never complete. Without idempotence the data loses nothing: order within a partition is
    kept by one request in flight per connection, and a record that a retry writes twice (its
    acknowledgement lost) carries the same event ids, which consumers and the warehouse dedupe.

    A producer that fails a publish is discarded all the same, so that no state of it we do not
    know of can outlive the failure: the next publish builds a fresh one (at most one every
    REBUILD_SECONDS; the publishes in between fail at once), and the failed one is closed in the
    background once its records are acknowledged or expired. Producers are built on first use,
    in the process that uses them (gunicorn forks workers; kafka-python's I/O thread must not
    cross a fork), so the front door starts, and answers 503, while the broker is down.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout: float,
        *,
        linger_ms: int = 0,
        compression: str | None = None,
    ):
        self._bootstrap = bootstrap
        self._topic = topic
        self._timeout = timeout
        self._linger_ms = linger_ms
        self._compression = compression
        self._producer: KafkaProducer | None = None
        self._next_build = 0.0  # time.monotonic() before which no producer is built
        self._delivered_at: float | None = None  # when a publish was last acknowledged; None after a failure
        self._partitions: int | None = None
        self._lock = threading.Lock()

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is not None:
                return self._producer
            now = time.monotonic()
            if now < self._next_build:
                raise QueueUnavailable(f"a Kafka producer failed less than {REBUILD_SECONDS:g}s ago")
            self._next_build = now + REBUILD_SECONDS
            timeout_ms = int(self._timeout * 1000)
            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    acks="all",
                    enable_idempotence=False,  # the class docstring says why
                    max_in_flight_requests_per_connection=1,  # a retried batch cannot overtake the next one
                    linger_ms=self._linger_ms,
                    compression_type=self._compression,
                    batch_size=512 * 1024,
                    max_request_size=16 * 1024 * 1024,
                    # Bound every wait by the front door's enqueue timeout; an expired record fails rather
                    # than arriving long after we answered 503 (one already sent may still be written).
                    max_block_ms=timeout_ms,
                    request_timeout_ms=timeout_ms,
                    delivery_timeout_ms=timeout_ms + self._linger_ms,
                    bootstrap_timeout_ms=timeout_ms,
                    allow_auto_create_topics=False,
                    metrics_enabled=False,  # kafka-python's own sensors cost CPU on every send
                )
            except KafkaError as exc:
                raise QueueUnavailable(f"cannot reach Kafka at {self._bootstrap}: {exc}") from exc
            return self._producer

    def partition_count(self) -> int:
        if self._partitions is None:
            try:
                partitions = self._get_producer().partitions_for(self._topic)
            except KafkaError as exc:
                raise QueueUnavailable(f"no metadata for topic {self._topic!r}: {exc}") from exc
            if not partitions:
                raise QueueUnavailable(f"topic {self._topic!r} does not exist; run `flokit kafka init`")
            self._partitions = len(partitions)
        return self._partitions

    def publish(self, records: Sequence[Record], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        producer = self._get_producer()
        try:
            futures = [producer.send(self._topic, value=r.value, partition=r.partition) for r in records]
            for future in futures:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:  # includes KafkaTimeoutError
            self._discard(producer)
            raise QueueUnavailable(f"Kafka did not acknowledge in {timeout:g}s: {exc}") from exc
        self._delivered_at = time.monotonic()

    def _discard(self, producer: KafkaProducer) -> None:
        """Use `producer` no more (the class docstring says why) and close it without making anyone wait."""
        with self._lock:
            self._delivered_at = None
            if self._producer is not producer:
                return  # already discarded
            self._producer = None
        threading.Thread(
            target=self._close_discarded, args=(producer,), name="kafka-producer-close", daemon=True
        ).start()

    def _close_discarded(self, producer: KafkaProducer) -> None:
        # close() first waits for the producer's records: each is
        # acknowledged or expires within its delivery timeout.
        try:
            producer.close(timeout=self._timeout + self._linger_ms / 1000 + 1)
        except KafkaError as exc:
            log.warning("a discarded Kafka producer did not close: %s", exc)

    def ready(self, timeout: float = 2.0) -> bool:
        # A publish acknowledged a moment ago proves delivery; otherwise (idle, or the last publish failed) a
        # metadata request for the topic must be answered in time. A TCP connect would not do: a broker that
        # is frozen (or a producer that is broken) still lets the kernel accept connections.
        delivered = self._delivered_at
        if delivered is not None and time.monotonic() - delivered < DELIVERED_RECENTLY_SECONDS:
            return True
        timeout_ms = max(1, int(timeout * 500))  # half to connect, half for the answer
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self._bootstrap,
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=timeout_ms,
            )
        except KafkaError:
            return False
        try:
            [topic] = admin.describe_topics([self._topic])
            return topic["error_code"] == 0 and bool(topic["partitions"])
        except KafkaError:
            return False
        finally:
            admin.close()

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self._timeout)
                self._producer = None


def create_topics(
    bootstrap: str, topics: dict[str, int], replication_factor: int = 1, min_insync_replicas: int = 1
) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    `min_insync_replicas`: with the producer's acks=all, how many replicas must hold a record before it is
    acknowledged, so that a 200 survives the loss of all but one of them."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    created = []
    try:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            try:
                admin.create_topics(
                    [
                        NewTopic(
                            name,
                            partitions,
                            replication_factor,
                            topic_configs={"min.insync.replicas": str(min_insync_replicas)},
                        )
                    ]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return created


class KafkaSubscriber(Subscriber):
    """A member of the consumer group on the events topic.

    Auto-commit is off: offsets move only through commit(), which the consumer
    calls after ClickHouse acknowledged the batch. `on_revoke(partitions)` runs
    inside poll() when a rebalance takes partitions away, before any other
    member may read them (schemas.queue.Subscriber): the consumer flushes and
    commits what it holds there.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group: str,
        *,
        on_revoke: OnRevoke | None = None,
        client_id: str | None = None,
        large_reads: bool = False,
    ):
        """`large_reads`: FLOKIT_KAFKA_LARGE_READS (kafka_recv.py), for the whole process."""
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        from . import kafka_recv

        kafka_recv.use_large_reads(large_reads)

        subscriber = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if on_revoke and revoked:
                    subscriber._revoking = True
                    try:
                        on_revoke({tp.partition for tp in revoked})
                    finally:
                        subscriber._revoking = False

            def on_partitions_assigned(self, assigned):
                log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))

        self._topic = topic
        self._revoking = False  # inside on_revoke: on kafka-python's I/O thread
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=10_000,
            # Fetched records sit in memory until polled, and batches are written while the next is
            # read: small fetches (Kafka's default per partition) keep the consumer's peak memory low
            # at the same throughput (bench/README.md).
            fetch_max_bytes=4 * 1024 * 1024,
            max_partition_fetch_bytes=1024 * 1024,
            metrics_enabled=False,
            # A batch is flushed well within this; past it the member is presumed dead.
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )
        self._consumer.subscribe([topic], listener=_Listener())

    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_messages)
        return [Message(tp.partition, r.offset, r.value) for tp, records in batches.items() for r in records]

    def commit(self, offsets: Mapping[int, int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        positions = {TopicPartition(self._topic, p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items()}
        if self._revoking:
            # kafka-python 3 runs rebalance listeners on its I/O thread, where a blocking commit is refused
            # ("Cannot block on net.run() from the IO thread itself"). The commit is sent without waiting for
            # its answer: if it is not recorded by the time the partitions' next owner reads its position,
            # that owner reads those records again and they are deduplicated (consumer/__init__.py).
            self._consumer.commit_async(positions, callback=_log_failed_commit)
            return
        try:
            self._consumer.commit(positions)
        except (CommitFailedError, IllegalStateError) as exc:
            raise CommitFailed(str(exc)) from exc
        except KafkaError as exc:  # the coordinator unreachable, a timeout: nothing committed
            raise QueueUnavailable(f"offsets not committed: {exc}") from exc

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def at_end(self) -> bool:
        # Each fetch answer carries its partition's high watermark (the next offset to be written).
        consumer = self._consumer
        partitions = consumer.assignment()
        try:
            for tp in partitions:
                end = consumer.highwater(tp)
                if end is None or (consumer.position(tp, timeout_ms=0) or 0) < end:
                    return False
        except IllegalStateError:  # revoked meanwhile
            return False
        return bool(partitions)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def _log_failed_commit(offsets: object, response: object) -> None:
    if isinstance(response, Exception):
        log.warning(
            "offsets committed on revocation were not recorded (%s); the next owner reads them again",
            response,
        )
