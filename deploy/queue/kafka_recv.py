"""kafka-python's socket reads in larger pieces: the FLOKIT_KAFKA_LARGE_READS switch.

kafka-python reads a broker's answer 4 KiB per `recv` (a constant in `KafkaTCPTransport._sock_recv`, no
setting) on its own I/O thread, and each `recv` gives up the GIL and takes it back. A consumer's fetch answer
is megabytes (`fetch_max_bytes`): about a thousand reads, each of which may wait for the GIL while the
consumer's own thread builds a batch. With the switch on, that private method is replaced by the same loop
reading RECV_BYTES at a time; off, kafka-python is left exactly as it ships. Whether it is worth patching a
private method is measured, in the same run, by the bench (bench/README.md).

`use_large_reads()` applies to the whole process, and only where kafka-python has the method (on a version
without it the library is left as it is, and the log says so). TLS connections (KafkaSSLTransport, a read
loop of its own) are always left as they are.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

RECV_BYTES = 256 * 1024

_stock_sock_recv = None  # kafka-python's own method, once it has been replaced


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


def use_large_reads(on: bool) -> bool:
    """From now on in this process, read in RECV_BYTES pieces (`on`) or as kafka-python ships (off);
    returns whether large reads are in effect (False when asked for but this kafka-python has no such
    method to replace)."""
    global _stock_sock_recv
    try:
        from kafka.net.transport import KafkaTCPTransport
    except ImportError:
        KafkaTCPTransport = None
    current = getattr(KafkaTCPTransport, "_sock_recv", None)
    if not on:
        if _stock_sock_recv is not None:
            KafkaTCPTransport._sock_recv = _stock_sock_recv
        return False
    if current is None:
        log.warning(
            "kafka-python %s has no KafkaTCPTransport._sock_recv: socket reads left at its own size",
            __import__("kafka").__version__,
        )
        return False
    if current is not _sock_recv:
        _stock_sock_recv = current
        KafkaTCPTransport._sock_recv = _sock_recv
    return True
