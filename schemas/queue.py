"""The queue between the front door and the consumers, as a narrow interface.

Two implementations sit behind it (deploy/queue/): Kafka (production) and a durable local log (embedded
mode). The front door only publishes; consumers only poll and commit. Both sides speak in partitions: all
records of one partition are delivered in the order they were published, and each partition is read by one
member of a consumer group at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: Called by a subscriber with the partitions a rebalance takes away from it (see Subscriber).
OnRevoke = Callable[[set[int]], None]


class QueueUnavailable(Exception):
    """The queue could not durably take the records in the time allowed.

    Nothing may be reported to a producer as accepted when this is raised.
    """


class GroupBusy(RuntimeError):
    """An exclusive queue's consumer group already has its one member (see Subscriber.exclusive)."""


class CommitFailed(Exception):
    """The position could not be committed because the partitions moved to
    another group member; that member reads the uncommitted messages again."""


@dataclass(frozen=True, slots=True)
class Record:
    """One record to publish, to an explicit partition (see schemas.envelope.partition_for)."""

    partition: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Message:
    """One record as a consumer receives it."""

    partition: int
    offset: int
    value: bytes


class Publisher(ABC):
    @abstractmethod
    def partition_count(self) -> int:
        """How many partitions the topic has; records are spread over 0..count-1."""

    @abstractmethod
    def publish(self, records: Sequence[Record], timeout: float) -> None:
        """Append every record and return only once all of them are durable.

        Durable means: acknowledged by all in-sync replicas (Kafka acks=all), or
        committed to the local log. Raises QueueUnavailable if that does not
        happen within `timeout` seconds; the caller must then report none of them
        as accepted, though it cannot say that none was queued: a record already
        sent may still be written (its event ids let consumers dedupe a retry).
        The publisher stays usable: a later publish tries again, so the caller
        recovers when the queue does, without being rebuilt.
        """

    @abstractmethod
    def ready(self, timeout: float = 2.0) -> bool:
        """True when the queue takes records now (for /readyz): a publish was just
        acknowledged, or the queue answered a request within `timeout`. Not after a
        failed publish until one of those succeeds; an open TCP port is no proof (a
        frozen broker's kernel still accepts connections)."""

    def close(self) -> None:  # noqa: B027 -- a no-op default on purpose: not every queue holds anything
        """Flush what is in flight and release connections."""


class Subscriber(ABC):
    """One member of a consumer group. Used by one thread at a time.

    Revocation. A subscriber is made with an `on_revoke: OnRevoke | None` (a constructor argument of every
    implementation; a consumer passes a factory taking it, see consumer.worker). When a rebalance moves
    partitions from this member to another, the subscriber calls `on_revoke(partitions)` inside poll(),
    before any other member may read them, so the caller can write and commit what it holds of them; a
    commit of those partitions after that raises CommitFailed.

    `exclusive` is True for a queue whose group has exactly one member (the local log): a second subscriber
    of the group is refused with GroupBusy while one is open, so the one member owns every partition from
    the start, no rebalance ever happens, on_revoke is never called and commit() never raises CommitFailed.
    Closing the subscriber ends its membership (the caller drains before it closes).
    """

    exclusive: bool = False

    @abstractmethod
    def poll(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` next messages of the assigned partitions, in
        partition order; an empty list once `timeout` seconds pass without any."""

    @abstractmethod
    def commit(self, offsets: Mapping[int, int]) -> None:
        """Record the consumer group's position: partition → the offset of the
        next message to read (the last processed offset + 1). Messages before it
        are never delivered to the group again. Raises CommitFailed when the
        group rebalanced and these partitions are no longer this member's, and
        QueueUnavailable when the queue cannot record it now (broker or group
        coordinator unreachable, the local log's disk full): nothing was
        committed, and the same commit may be tried again."""

    @abstractmethod
    def assignment(self) -> set[int]:
        """The partitions this member currently reads."""

    def at_end(self) -> bool:
        """True when, as of the queue's last answer, every assigned partition has been read to its end:
        nothing more is there to poll right now. False when not, or not known."""
        return False

    def close(self) -> None:  # noqa: B027 -- a no-op default on purpose, like Publisher.close
        """Leave the group; uncommitted messages go to whichever member takes
        the partition next."""


#: Makes the subscriber a consumer reads through, given the callback for revoked partitions.
SubscriberFactory = Callable[[OnRevoke], Subscriber]
