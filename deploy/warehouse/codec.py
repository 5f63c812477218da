"""HTTP body plumbing: request bodies (Content-Length or chunked, maybe compressed) and compressed responses.

clickhouse-connect compresses insert bodies by default (`Content-Encoding: lz4`, one LZ4 frame per block, sent
chunked) and asks for compressed query results (`Accept-Encoding: lz4,zstd,gzip,deflate` together with
`enable_http_compression=1`). Both directions stream: nothing here holds a whole body.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

import lz4.frame

try:  # Python < 3.14 gets zstd from the backport clickhouse-connect depends on
    from backports import zstd
except ImportError:  # pragma: no cover
    from compression import zstd  # type: ignore[no-redef]

from deploy.warehouse.errors import BAD_ARGUMENTS, CANNOT_READ_ALL_DATA, ClickHouseError

READ_SIZE = 4 << 20  # largest piece read at once from a Content-Length body


class RequestBody:
    """The raw request body as an iterator of chunks; tracks whether it was read to the end."""

    def __init__(self, rfile: BinaryIO, headers):
        self._rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self._left = 0 if self.chunked else int(headers.get("Content-Length") or 0)
        self.finished = not self.chunked and self._left == 0

    def __iter__(self) -> Iterator[bytes]:
        while not self.finished:
            chunk = self._next_chunked() if self.chunked else self._next_sized()
            if chunk:
                yield chunk

    def drain(self) -> None:
        """Read and drop the rest, so the connection can carry the next request."""
        for _ in self:
            pass

    def _next_sized(self) -> bytes:
        data = self._rfile.read(min(self._left, READ_SIZE))
        if not data:
            raise _truncated()
        self._left -= len(data)
        self.finished = self._left == 0
        return data

    def _next_chunked(self) -> bytes:
        line = self._rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _truncated() from None
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            self.finished = True
            return b""
        data = self._rfile.read(size)
        if len(data) != size or self._rfile.readline(1024) not in (b"\r\n", b"\n"):
            raise _truncated()
        return data


def _truncated() -> ClickHouseError:
    return ClickHouseError.of(CANNOT_READ_ALL_DATA, "Request body ended before its declared end")


class Decompressor(Protocol):
    """What zlib's, zstd's and lz4.frame's decompressor objects have in common."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, /) -> bytes: ...


_DECODERS: dict[str, Callable[[], Decompressor]] = {
    "lz4": lz4.frame.LZ4FrameDecompressor,
    "zstd": zstd.ZstdDecompressor,
    "gzip": lambda: zlib.decompressobj(wbits=31),
    "x-gzip": lambda: zlib.decompressobj(wbits=31),
    "deflate": lambda: zlib.decompressobj(wbits=15),
}


def decoded(chunks: Iterator[bytes], encoding: str | None) -> Iterator[bytes]:
    """Undo a request's Content-Encoding chunk by chunk. Concatenated frames (clickhouse-connect sends one
    LZ4 frame per block) and gzip members each get a fresh decompressor."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        yield from chunks
        return
    make = _DECODERS.get(encoding)
    if make is None:
        raise ClickHouseError.of(BAD_ARGUMENTS, f"Unknown Content-Encoding '{encoding}'")
    decoder, pending = make(), False  # pending: the current frame has begun but not ended
    for chunk in chunks:
        while chunk:
            try:
                out = decoder.decompress(chunk)
            except Exception as exc:
                raise ClickHouseError.of(
                    CANNOT_READ_ALL_DATA, f"Cannot decode {encoding} body: {exc}"
                ) from None
            if out:
                yield out
            chunk, pending = b"", not decoder.eof
            if decoder.eof:
                chunk, decoder = decoder.unused_data or b"", make()
    if pending:
        raise ClickHouseError.of(CANNOT_READ_ALL_DATA, f"The {encoding} body ends inside a frame")


# Response side, cheapest first: on loopback the CPU spent compressing is the whole cost.
_PREFERENCE = ("lz4", "zstd", "gzip", "deflate")


def choose_encoding(accept_encoding: str) -> str | None:
    """The response Content-Encoding to use for an Accept-Encoding header, None for identity."""
    offered = {part.split(";", 1)[0].strip().lower() for part in accept_encoding.split(",")}
    return next((name for name in _PREFERENCE if name in offered), None)


class Encoder:
    """A streaming compressor: encode() returns what is ready to send now (maybe b""), finish() the rest."""

    def __init__(self, method: str):
        self.method = method
        if method == "lz4":
            self._c = lz4.frame.LZ4FrameCompressor(auto_flush=True)
            self._head = self._c.begin()
        elif method == "zstd":
            self._c, self._head = zstd.ZstdCompressor(level=3), b""
        else:
            self._c, self._head = zlib.compressobj(3, wbits=31 if method == "gzip" else 15), b""

    def encode(self, data) -> bytes:
        head, self._head = self._head, b""
        if self.method == "lz4":
            return head + self._c.compress(data)
        if self.method == "zstd":
            return self._c.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)
        return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        head, self._head = self._head, b""
        if self.method == "zstd":
            return self._c.flush(zstd.ZstdCompressor.FLUSH_FRAME)
        return head + self._c.flush()
