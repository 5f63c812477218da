"""deploy.queue.kafka_recv: the FLOKIT_KAFKA_LARGE_READS switch. On, kafka-python's socket reads come in
RECV_BYTES pieces with kafka-python's semantics; off, kafka-python's own method is back. Every test runs in
both positions.

The reads are checked on a real socket pair, through a wrapper that counts the `recv` calls; the consumer's
real fetches go through them in the Kafka queue tests (tests/test_queue_contract.py, also in both
positions)."""

from __future__ import annotations

import socket

import pytest
from kafka import errors
from kafka.net.transport import KafkaTCPTransport

from deploy.queue import kafka_recv


@pytest.fixture(params=["stock", "large reads"])
def sock_recv(request):
    """KafkaTCPTransport._sock_recv as the switch leaves it; the library as it ships afterwards."""
    large = request.param == "large reads"
    assert kafka_recv.use_large_reads(large) is large
    yield KafkaTCPTransport._sock_recv
    kafka_recv.use_large_reads(False)


class CountingSocket:
    def __init__(self, sock: socket.socket):
        self.sock, self.calls = sock, 0

    def recv(self, size):
        self.calls += 1
        return self.sock.recv(size)


class Transport:  # what _sock_recv uses of a KafkaTCPTransport
    def __init__(self, sock):
        self._sock = sock


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    return a, b


def test_the_switch_replaces_the_method_or_leaves_kafka_pythons_own(sock_recv):
    large = sock_recv is kafka_recv._sock_recv
    assert large or sock_recv.__module__ == "kafka.net.transport"
    kafka_recv.use_large_reads(not large)  # and it can be turned the other way
    assert (KafkaTCPTransport._sock_recv is kafka_recv._sock_recv) is not large


def test_what_is_there_is_read_in_pieces_of_the_chosen_size(sock_recv):
    reader, writer = pair()
    payload = bytes(range(256)) * 4096  # 1 MiB
    writer.sendall(payload)
    sock = CountingSocket(reader)
    got, err = sock_recv(Transport(sock))
    assert err is None and got == payload[: len(got)] and len(got) > 0
    if sock_recv is kafka_recv._sock_recv:
        # One more call meets "no more for now".
        assert sock.calls <= len(got) // kafka_recv.RECV_BYTES + 2
    else:
        assert sock.calls >= len(got) // 4096  # why the switch exists: 4 KiB per call
    rest, err = sock_recv(Transport(reader))
    assert err is None and got + rest == payload
    reader.close(), writer.close()


def test_a_closed_peer_is_a_connection_error_after_the_bytes_it_sent(sock_recv):
    reader, writer = pair()
    writer.sendall(b"last words")
    writer.close()
    got, err = sock_recv(Transport(reader))
    assert got == b"last words" and isinstance(err, errors.KafkaConnectionError)
    reader.close()


def test_nothing_there_is_nothing_read_and_no_error(sock_recv):
    reader, writer = pair()
    assert sock_recv(Transport(reader)) == (b"", None)
    reader.close(), writer.close()


def test_the_switch_is_a_setting():
    from deploy.settings import Settings

    assert Settings.from_env({"FLOKIT_KAFKA_LARGE_READS": "off"}).kafka_large_reads is False
    assert Settings.from_env({"FLOKIT_KAFKA_LARGE_READS": "on"}).kafka_large_reads is True
    assert Settings.from_env({"FLOKIT_MALLOC_PIN": "0"}).malloc_pin is False
    with pytest.raises(SystemExit, match="neither on nor off"):
        Settings.from_env({"FLOKIT_KAFKA_LARGE_READS": "sometimes"})
