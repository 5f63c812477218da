"""kafka-python's socket reads, in larger pieces.

kafka-python 3.0 reads a broker's answer 4 KiB per `recv` (`KafkaTCPTransport._sock_recv`, a constant, no
setting) on its own I/O thread, and each `recv` gives up the GIL and takes it back. A consumer's fetch answer
is up to `fetch_max_bytes` (4 MiB): ~1,000 reads, each of which may wait for the GIL while the consumer's own
thread builds a batch (up to the 5 ms switch interval). A bare KafkaConsumer beside one busy thread fetched
45-52k events/s with 4 KiB reads and 178-181k with 256 KiB reads (~650k either way without the busy thread);
in the consumer, the wait in polls fell by ~17 % (bench/README.md). The loop below is kafka-python's own,
with a larger read.

`install()` replaces the method, once per process, only where kafka-python has it (the method is private: on
a version without it the library is left as it is, and says so in the log). TLS connections
(KafkaSSLTransport, a read loop of its own) are left as they are.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024


def _sock_recv(self):
    from kafka import errors

    received = []
    while True:
        try:
            data = self._sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):  # nothing more for now (a non-blocking socket)
            break
        except BaseException as exc:  # as kafka-python does: any failure closes the connection
            log.exception("%s: error receiving network data, closing socket", self)
            return b"".join(received), errors.KafkaConnectionError(exc)
        if not data:  # the broker closed the connection
            log.error("%s: socket disconnected", self)
            return b"".join(received), errors.KafkaConnectionError("socket disconnected")
        received.append(data)
    return b"".join(received), None


def install() -> bool:
    """Read in RECV_BYTES pieces from now on, in this process; False if this kafka-python has no such
    method to replace."""
    try:
        from kafka.net.transport import KafkaTCPTransport
    except ImportError:
        KafkaTCPTransport = None
    if getattr(KafkaTCPTransport, "_sock_recv", None) is None:
        log.warning("kafka-python %s has no KafkaTCPTransport._sock_recv: socket reads left at its own size",
                    __import__("kafka").__version__)
        return False
    KafkaTCPTransport._sock_recv = _sock_recv
    return True
