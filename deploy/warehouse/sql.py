"""Just enough SQL lexing to route a request; chdb does the real parsing.

Two questions need answering before the engine sees a query:
- does this INSERT carry its data inline (`... FORMAT X <data>` / `... VALUES <data>`), and where does the
  data start? The data is spooled to a file and inserted with `FROM INFILE` (see engine.Connection.insert)
  rather than going through the SQL parser;
- which output format will a query use (for `X-ClickHouse-Format` and whether it can be streamed)?

The lexer works on bytes because an insert body is binary after its statement; it only ever looks at
the statement part.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_WORD = re.compile(rb"[A-Za-z_][A-Za-z0-9_$]*")
_SPACE = b" \t\n\r\f\v"
_QUOTES = b"'\"`"


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "quoted", "open", "close", "other"
    start: int
    end: int
    text: bytes


class Incomplete(Exception):
    """The buffer ends inside the statement: read more body before deciding."""


def tokens(buf: bytes, pos: int = 0) -> Iterator[Token]:
    """Tokens of `buf` from `pos`, skipping whitespace and comments; Incomplete on a cut-off literal."""
    n = len(buf)
    while pos < n:
        ch = buf[pos]
        if ch in _SPACE:
            pos += 1
        elif buf.startswith(b"--", pos) or buf.startswith(b"#", pos):
            end = buf.find(b"\n", pos)
            if end < 0:
                raise Incomplete
            pos = end + 1
        elif buf.startswith(b"/*", pos):
            end = buf.find(b"*/", pos + 2)
            if end < 0:
                raise Incomplete
            pos = end + 2
        elif ch in _QUOTES:
            end = _quoted_end(buf, pos)
            yield Token("quoted", pos, end, buf[pos:end])
            pos = end
        elif (word := _WORD.match(buf, pos)) is not None:
            yield Token("word", pos, word.end(), word.group().upper())
            pos = word.end()
        else:
            kind = "open" if ch in b"([{" else "close" if ch in b")]}" else "other"
            yield Token(kind, pos, pos + 1, buf[pos : pos + 1])
            pos += 1


def _quoted_end(buf: bytes, pos: int) -> int:
    quote, i = buf[pos], pos + 1
    while True:
        j = buf.find(bytes([quote]), i)
        k = buf.find(b"\\", i, j if j >= 0 else len(buf))
        if k >= 0:  # a backslash escapes the next byte
            i = k + 2
            continue
        if j < 0:
            raise Incomplete
        if buf[j + 1 : j + 2] == bytes([quote]):  # doubled quote
            if j + 2 >= len(buf):
                raise Incomplete
            i = j + 2
            continue
        return j + 1


def first_token(buf: bytes) -> bytes:
    """The statement's first token: a keyword upper-cased, or a punctuation byte like b"(" (b"" if none)."""
    try:
        for tok in tokens(buf):
            return tok.text
    except Incomplete:
        pass
    return b""


@dataclass(frozen=True)
class InlineInsert:
    statement: str  # the INSERT without its FORMAT clause, e.g. "INSERT INTO t (a, b) SETTINGS x=1"
    format: str  # input format of the data ("Values" for VALUES)
    data_start: int  # offset of the first data byte in the buffer


def split_insert(buf: bytes, at_eof: bool) -> InlineInsert | None:
    """Find where an INSERT's inline data starts.

    Returns None when the text is not an INSERT with inline data (a SELECT, an INSERT ... SELECT):
    such text is run as a whole. Raises Incomplete if `buf` ends before that can be decided.
    """
    depth, seen_insert = 0, False
    stream = tokens(buf)
    try:
        for tok in stream:
            if tok.kind == "word" and tok.end == len(buf) and not at_eof:
                raise Incomplete  # the word may go on in the next chunk
            if not seen_insert:
                if tok.text != b"INSERT":
                    return None
                seen_insert = True
            elif tok.kind == "open":
                depth += 1
            elif tok.kind == "close":
                depth -= 1
            elif depth == 0 and tok.kind == "word":
                if tok.text in (b"SELECT", b"WITH"):
                    return None
                if tok.text == b"VALUES":
                    return InlineInsert(buf[: tok.start].decode(), "Values", tok.end)
                if tok.text == b"FORMAT":
                    name = next(stream, None)
                    if name is None or name.kind != "word":
                        break
                    start = _data_start(buf, name.end, at_eof)
                    return InlineInsert(buf[: tok.start].decode(), buf[name.start : name.end].decode(), start)
    except Incomplete:
        pass
    if at_eof:
        return None
    raise Incomplete


def insert_from_file(statement: str, path_literal: str, fmt: str) -> str:
    """An InlineInsert's `statement` reading its data from a file: `INSERT INTO t (a, b) [SETTINGS ...]`
    becomes `INSERT INTO t (a, b) FROM INFILE '<path>' [SETTINGS ...] FORMAT fmt`.

    ClickHouse's grammar wants FROM INFILE before the SETTINGS clause, so it goes in front of a top-level
    `SETTINGS name =` (a table or column called `settings` is not followed by `name =`).
    """
    buf = statement.encode()
    found = list(tokens(buf))
    cut, depth = len(buf), 0
    for i, tok in enumerate(found):
        depth += tok.kind == "open"
        depth -= tok.kind == "close"
        if (
            depth == 0
            and tok.text == b"SETTINGS"
            and i + 2 < len(found)
            and found[i + 1].kind in ("word", "quoted")
            and found[i + 2].text == b"="
        ):
            cut = tok.start
            break
    # Newlines, not spaces: the statement may end in a `-- comment`.
    return f"{buf[:cut].decode()}\nFROM INFILE {path_literal}\n{buf[cut:].decode()}\nFORMAT {fmt}"


def _data_start(buf: bytes, pos: int, at_eof: bool) -> int:
    # As ClickHouse's ParserInsertQuery: data starts after the first newline, else after the blanks.
    n = len(buf)
    while pos < n and buf[pos] in b" \t\f":
        pos += 1
    if pos < n and buf[pos] == 0x0D:
        pos += 1
    if pos < n and buf[pos] == 0x0A:
        return pos + 1
    if pos >= n and not at_eof:
        raise Incomplete
    return pos


def output_format(text: bytes, known: dict[str, str]) -> str | None:
    """The format named by a top-level `FORMAT x` clause, as its canonical name, if any.

    `known` maps lower-cased output format names to canonical ones (from system.formats); a word after
    FORMAT that is not a format (a column called `format`) is not a format clause.
    """
    depth, found, after_format = 0, None, False
    try:
        for tok in tokens(text):
            if after_format and tok.kind == "word":
                found = known.get(text[tok.start : tok.end].decode().lower(), found)
            after_format = depth == 0 and tok.text == b"FORMAT"
            depth += tok.kind == "open"
            depth -= tok.kind == "close"
    except Incomplete:
        pass
    return found
