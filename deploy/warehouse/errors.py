"""ClickHouse-shaped errors: parse chdb's exception text, render it as the HTTP interface does.

The HTTP interface answers a failed query with a non-200 status, the header
`X-ClickHouse-Exception-Code: N` and the body `Code: N. DB::Exception: ... (NAME) (version ...)`.
clickhouse-connect turns exactly that into `DatabaseError(code=N, name=NAME)`.
"""

from __future__ import annotations

import re

# Status per exception name, as ClickHouse's exceptionCodeToHTTPStatus maps them; anything else is 500.
_STATUS_BY_NAME = {
    **dict.fromkeys(("REQUIRED_PASSWORD",), 401),
    **dict.fromkeys(
        ("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE", "ACCESS_DENIED"),
        403,
    ),
    **dict.fromkeys(
        (
            "BAD_ARGUMENTS",
            "CANNOT_COMPILE_REGEXP",
            "CANNOT_PARSE_TEXT",
            "CANNOT_PARSE_ESCAPE_SEQUENCE",
            "CANNOT_PARSE_QUOTED_STRING",
            "CANNOT_PARSE_DATE",
            "CANNOT_PARSE_DATETIME",
            "CANNOT_PARSE_NUMBER",
            "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING",
            "CANNOT_PARSE_IPV4",
            "CANNOT_PARSE_IPV6",
            "CANNOT_PARSE_INPUT_ASSERTION_FAILED",
            "CANNOT_PARSE_UUID",
            "DUPLICATE_COLUMN",
            "ILLEGAL_COLUMN",
            "UNKNOWN_ELEMENT_IN_AST",
            "UNKNOWN_TYPE_OF_AST_NODE",
            "THERE_IS_NO_COLUMN",
            "TOO_DEEP_AST",
            "TOO_BIG_AST",
            "UNEXPECTED_AST_STRUCTURE",
            "SYNTAX_ERROR",
            "INCORRECT_DATA",
            "TYPE_MISMATCH",
            "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE",
        ),
        400,
    ),
    **dict.fromkeys(
        (
            "UNKNOWN_TABLE",
            "UNKNOWN_FUNCTION",
            "UNKNOWN_IDENTIFIER",
            "UNKNOWN_TYPE",
            "UNKNOWN_STORAGE",
            "UNKNOWN_DATABASE",
            "UNKNOWN_SETTING",
            "UNKNOWN_DIRECTION_OF_SORTING",
            "UNKNOWN_AGGREGATE_FUNCTION",
            "UNKNOWN_FORMAT",
            "UNKNOWN_DATABASE_ENGINE",
            "UNKNOWN_TYPE_OF_QUERY",
            "UNKNOWN_ROLE",
        ),
        404,
    ),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    **dict.fromkeys(("SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"), 503),
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

_CODE_RE = re.compile(r"Code: (\d+)\. ", re.S)
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^\n]*\))?\s*$")
_VERSION_RE = re.compile(r"\(version [^\n]*\)\s*$")

# Codes this server raises itself (values as in ClickHouse's ErrorCodes.cpp).
SYNTAX_ERROR = (62, "SYNTAX_ERROR")
BAD_ARGUMENTS = (36, "BAD_ARGUMENTS")
UNKNOWN_SETTING = (115, "UNKNOWN_SETTING")
NOT_IMPLEMENTED = (48, "NOT_IMPLEMENTED")
READONLY = (164, "READONLY")
SESSION_NOT_FOUND = (372, "SESSION_NOT_FOUND")
SESSION_IS_LOCKED = (373, "SESSION_IS_LOCKED")
CANNOT_READ_ALL_DATA = (33, "CANNOT_READ_ALL_DATA")
CANNOT_WRITE_TO_FILE_DESCRIPTOR = (75, "CANNOT_WRITE_TO_FILE_DESCRIPTOR")
NOT_ENOUGH_SPACE = (243, "NOT_ENOUGH_SPACE")
STD_EXCEPTION = (1001, "STD_EXCEPTION")


class ClickHouseError(Exception):
    """A query failure with ClickHouse's code, name and message text (`DB::Exception: ...`)."""

    def __init__(self, code: int, name: str, message: str):
        super().__init__(message)
        self.code, self.name, self.message = code, name, message

    @classmethod
    def of(cls, kind: tuple[int, str], text: str) -> ClickHouseError:
        """An error raised by this server itself, e.g. `ClickHouseError.of(SYNTAX_ERROR, "Empty query")`."""
        code, name = kind
        return cls(code, name, f"DB::Exception: {text}. ({name})")

    @classmethod
    def from_engine(cls, exc: BaseException) -> ClickHouseError:
        """Wrap whatever chdb raised; its text already reads `Code: N. DB::Exception: ... (NAME)`."""
        if isinstance(exc, ClickHouseError):
            return exc
        text = str(exc).strip()
        found = _CODE_RE.search(text)
        if not found:
            return cls.of(STD_EXCEPTION, f"{type(exc).__name__}: {text}")
        message = text[found.end() :]
        named = _NAME_RE.search(message)
        return cls(int(found.group(1)), named.group(1) if named else "", message)

    @property
    def http_status(self) -> int:
        return _STATUS_BY_NAME.get(self.name, 500)

    def body(self, version: str) -> bytes:
        """The response body ClickHouse would send: one line, version suffix included."""
        text = f"Code: {self.code}. {self.message}"
        if not _VERSION_RE.search(text):
            text += f" (version {version} (official build))"
        return (text + "\n").encode()
