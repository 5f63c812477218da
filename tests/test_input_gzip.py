"""ingest_api.body on a gzip body of many members: the decompressed-size cap holds across all of them, and
a bomb split into members is refused after expanding no more than the cap (memory traced, not timed)."""

from __future__ import annotations

import gzip
import io
import tracemalloc

import pytest
from werkzeug.test import EnvironBuilder

from ingest_api.body import read_body
from ingest_api.errors import BadRequest, PayloadTooLarge
from ingest_api.request import IngestRequest

CAP = 1_000_000


def gzip_request(data: bytes) -> IngestRequest:
    environ = EnvironBuilder(
        path="/v1/batch/events",
        method="POST",
        content_type="application/json",
        headers={"Content-Encoding": "gzip"},
    ).get_environ()
    environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(data), str(len(data))
    return IngestRequest(environ)


def test_a_bomb_split_into_members_is_refused_without_expanding_it():
    member = gzip.compress(b" " * (CAP // 2))  # about 1 KB each, 500 KB expanded
    bomb = member * 500  # 250 MB expanded, in a body far under the cap
    assert len(bomb) < CAP
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            read_body(gzip_request(bomb), CAP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * CAP, peak


def test_members_are_decoded_in_order_up_to_the_cap():
    parts = [b'{"events": [', b"1,", b"2", b"]}"]
    body = b"".join(gzip.compress(part) for part in parts)
    assert read_body(gzip_request(body), CAP) == b"".join(parts)
    exact = b"".join(gzip.compress(b"x" * (CAP // 4)) for _ in range(4))
    assert len(read_body(gzip_request(exact), CAP)) == CAP
    with pytest.raises(PayloadTooLarge):
        read_body(gzip_request(exact + gzip.compress(b"x")), CAP)


@pytest.mark.parametrize(
    "tail, words",
    [
        (b"x", "1 byte after the gzip data"),
        (gzip.compress(b"x")[:-3], "truncated"),
        (b"\x1f\x8b" + b"\x00" * 20, "not valid gzip"),
    ],
    ids=["not gzip", "a truncated member", "a corrupt member"],
)
def test_what_follows_a_member_must_be_a_whole_member(tail, words):
    with pytest.raises(BadRequest) as info:
        read_body(gzip_request(gzip.compress(b"{}") + tail), CAP)
    assert info.value.code == "invalid_body" and words in info.value.message, info.value.message
