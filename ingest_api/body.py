"""Reading a request body: content type, optional gzip, size caps, JSON.

The size cap applies to what arrives and again to what gzip expands to, so a
small compressed body cannot turn into gigabytes in memory. A gzip body may be
several gzip members (concatenated gzip files), decoded one after the other as
`gzip -d` does, the cap counting them all; anything else after the gzip data is
refused, never ignored.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .request import IngestRequest


def read_body(request: IngestRequest, max_bytes: int) -> bytes:
    mimetype, params = request.media_type()
    if mimetype != "application/json":
        raise UnsupportedMediaType(
            "unsupported_media_type",
            f"Content-Type must be application/json, not {request.content_type or 'missing'!r}",
        )
    charset = params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("unsupported_media_type", f"the body must be UTF-8, not {charset}")
    length = request.content_length
    if length is not None and length > max_bytes:
        raise _too_large(max_bytes)
    try:
        raw = request.stream.read(max_bytes + 1)
    except OSError:  # the server's reader: the connection ended (or broke) before Content-Length bytes came
        raise BadRequest(
            "invalid_body", "the body ended before its Content-Length; send the whole body"
        ) from None
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    encoding = request.header("Content-Encoding", "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return _gunzip(raw, max_bytes)
    if encoding != "identity":
        raise UnsupportedMediaType(
            "unsupported_content_encoding",
            f"Content-Encoding {encoding!r} is not supported; send gzip or no encoding",
        )
    return raw


# A member per event of the largest batch is the most a client has a reason to send; the bound keeps a body
# of thousands of empty members (20 bytes each) from costing more to decode than to parse.
MAX_GZIP_MEMBERS = 1000
# Input is fed in slices: zlib copies whatever follows a member's end into unused_data, and the whole rest of
# the body at every member would make many members cost quadratic time.
_GZIP_SLICE = 64 * 1024


def _gunzip(raw: bytes, max_bytes: int) -> bytes:
    body = memoryview(raw)
    out: list[bytes] = []
    size = position = 0
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof:
            if position == len(raw):
                raise BadRequest("invalid_body", "the gzip body is truncated")
            piece = body[position : position + _GZIP_SLICE]
            try:
                chunk = inflater.decompress(piece, max_bytes - size + 1)
            except zlib.error as exc:
                raise BadRequest("invalid_body", f"the body is not valid gzip: {exc}") from None
            size += len(chunk)
            if size > max_bytes or inflater.unconsumed_tail:  # output stopped at the cap with input left
                raise _too_large(max_bytes, "once decompressed")
            out.append(chunk)
            position += len(piece) - len(inflater.unused_data)
        if position == len(raw):
            return b"".join(out)
        if raw[position : position + 2] != b"\x1f\x8b":  # not the start of another member
            extra = len(raw) - position
            raise BadRequest(
                "invalid_body",
                f"the body has {extra} byte{'s' * (extra != 1)} after the gzip data;"
                " send only gzip data (several gzip members are read in order)",
            )
    raise BadRequest(
        "invalid_body",
        f"the body has more than {MAX_GZIP_MEMBERS} gzip members; compress it as one gzip stream",
    )


def _too_large(max_bytes: int, when: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(
        "payload_too_large",
        f"the body is larger than {max_bytes} bytes{' ' + when if when else ''};"
        " send fewer events per request",
    )


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise BadRequest("invalid_json", "the request body is empty; send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise BadRequest("invalid_utf8", f"the body is not valid UTF-8 (byte {bad.start})") from None
        raise BadRequest("invalid_json", f"the body is not valid JSON: {exc}") from None
