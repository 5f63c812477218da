"""deploy.queue.kafka_recv: kafka-python's socket reads in RECV_BYTES pieces, with kafka-python's semantics.

The reads are checked on a real socket pair, through a wrapper that counts the `recv` calls; the consumer's
real fetches through it are exercised by the Kafka queue tests (KafkaSubscriber installs it)."""
from __future__ import annotations

import socket

from kafka import errors
from kafka.net.transport import KafkaTCPTransport

from deploy.queue import kafka_recv


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


def test_install_replaces_kafka_pythons_4_kib_reads():
    assert kafka_recv.install() and KafkaTCPTransport._sock_recv is kafka_recv._sock_recv


def test_what_is_there_is_read_in_few_large_pieces():
    reader, writer = pair()
    payload = bytes(range(256)) * 4096  # 1 MiB
    writer.sendall(payload)
    sock = CountingSocket(reader)
    got, err = kafka_recv._sock_recv(Transport(sock))
    assert err is None and got == payload[:len(got)] and len(got) > 0
    # 4 KiB reads took at least len(got) / 4096 calls (256 for all of it); one more call meets "no more for now".
    assert sock.calls <= len(got) // kafka_recv.RECV_BYTES + 2
    rest, err = kafka_recv._sock_recv(Transport(reader))
    assert err is None and got + rest == payload
    reader.close(), writer.close()


def test_a_closed_peer_is_a_connection_error_after_the_bytes_it_sent():
    reader, writer = pair()
    writer.sendall(b"last words")
    writer.close()
    got, err = kafka_recv._sock_recv(Transport(reader))
    assert got == b"last words" and isinstance(err, errors.KafkaConnectionError)
    reader.close()


def test_nothing_there_is_nothing_read_and_no_error():
    reader, writer = pair()
    assert kafka_recv._sock_recv(Transport(reader)) == (b"", None)
    reader.close(), writer.close()
