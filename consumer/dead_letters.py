"""Messages that cannot be processed go to the dead-letter topic with the
reason, so the partition keeps moving and nothing is dropped silently.

A dead letter is a JSON document: the reason, where the message came from,
when it failed, and the original bytes (as text when they are UTF-8, else
base64), enough to inspect it and to re-publish it once fixed.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence

import orjson

from schemas.queue import Message, Publisher, Record


class DeadLetters:
    def __init__(self, publisher: Publisher, source_topic: str, timeout: float):
        self._publisher = publisher
        self._source = source_topic
        self._timeout = timeout

    def send(self, failures: Sequence[tuple[Message, str]]) -> None:
        """Durably publish every failure (raises QueueUnavailable, to be retried)."""
        if not failures:
            return
        partitions = self._publisher.partition_count()
        self._publisher.publish(
            [Record(m.partition % partitions, encode(m, reason, self._source)) for m, reason in failures],
            self._timeout,
        )


def encode(message: Message, reason: str, source_topic: str) -> bytes:
    doc = {
        "reason": reason,
        "topic": source_topic,
        "partition": message.partition,
        "offset": message.offset,
        "failed_at": time.time(),
    }
    try:
        doc["value"] = message.value.decode("utf-8")
    except UnicodeDecodeError:
        doc["value_base64"] = base64.b64encode(message.value).decode()
    return orjson.dumps(doc)
