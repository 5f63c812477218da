"""Split an HTTP request's parameters the way ClickHouse's HTTP handler does.

Every URL parameter is a ClickHouse setting for this query, except the ones the HTTP interface itself
consumes (below) and `param_<name>` values for `{name:Type}` placeholders. clickhouse-connect 1.12 sends,
besides `query`/`database`: `query_id` and `session_id` (auto-generated), `wait_end_of_query=1` for buffered
reads, `enable_http_compression=1`, `send_progress_in_http_headers`, `http_headers_progress_interval_ms`,
`cancel_http_readonly_queries_on_client_close`, `client_protocol_version` (on its connect probe), and
real settings such as `date_time_input_format=best_effort`. With many/large bound values it moves `query` and
`param_*` into a multipart/form-data body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from email.utils import collapse_rfc2231_value

from deploy.warehouse.errors import BAD_ARGUMENTS, NOT_IMPLEMENTED, UNKNOWN_SETTING, ClickHouseError

# Consumed by the HTTP layer (here or in the handler) and never applied as engine settings. Auth and roles
# are ignored on purpose: the server only listens on loopback and chdb has a single `default` user.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "role",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "stacktrace",
        "close_session",
        # HTTP-only settings: no meaning inside the embedded engine.
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_wait_end_of_query",
        "http_response_buffer_size",
        "add_http_cors_header",
        "http_native_compression_disable_checksumming_on_decompress",
        "http_write_exception_in_output_format",
    }
)
_TRUE = ("1", "true", "yes", "on")
DEFAULT_SESSION_TIMEOUT, MAX_SESSION_TIMEOUT = 60.0, 3600.0
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class QueryRequest:
    """What one HTTP request asks of the engine, apart from its body."""

    query: str = ""
    database: str = ""
    default_format: str = "TabSeparated"
    query_id: str = ""
    session_id: str = ""
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    session_check: bool = False
    wait_end_of_query: bool = False
    compress_response: bool = False  # enable_http_compression: honour Accept-Encoding
    readonly: bool = False  # a GET request, as in ClickHouse
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]], method: str, headers=None) -> QueryRequest:
        """From the URL's (name, value) pairs; the X-ClickHouse-Database/-Format headers count too."""
        req, raw = cls(readonly=method == "GET"), dict(pairs)
        headers = headers or {}
        for key, value in pairs:
            if key.startswith("param_"):
                req.params[key[6:]] = value
            elif key not in TRANSPORT_PARAMS:
                if not _IDENTIFIER.match(key):
                    raise ClickHouseError.of(UNKNOWN_SETTING, f"Unknown setting '{key}'")
                req.settings[key] = value
        req.query = raw.get("query", "")
        req.database = raw.get("database") or headers.get("X-ClickHouse-Database", "")
        req.default_format = (
            raw.get("default_format") or headers.get("X-ClickHouse-Format") or req.default_format
        )
        req.query_id = raw.get("query_id", "")
        req.session_id = raw.get("session_id", "")
        if raw.get("session_timeout"):
            try:
                req.session_timeout = min(float(raw["session_timeout"]), MAX_SESSION_TIMEOUT)
            except ValueError:
                raise ClickHouseError.of(
                    BAD_ARGUMENTS, "session_timeout must be a number of seconds"
                ) from None
        req.session_check = raw.get("session_check", "").lower() in _TRUE
        req.wait_end_of_query = raw.get("wait_end_of_query", "").lower() in _TRUE
        req.compress_response = raw.get("enable_http_compression", "").lower() in _TRUE
        for name in ("compress", "decompress"):
            if raw.get(name, "").lower() in _TRUE:
                raise ClickHouseError.of(
                    NOT_IMPLEMENTED,
                    f"ClickHouse-native compression ({name}=1) is not "
                    "supported by this server; use Content-Encoding/Accept-Encoding",
                )
        return req

    def add_form(self, content_type: str, body: bytes) -> None:
        """Take `query` and `param_*` from a multipart/form-data body (clickhouse-connect's form encoding)."""
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        for part in message.iter_parts():
            param = part.get_param("name", header="content-disposition")  # a tuple when RFC 2231-encoded
            name = collapse_rfc2231_value(param) if isinstance(param, tuple) else param or ""
            payload = part.get_payload(decode=True)  # bytes for a part that is not itself multipart
            value = payload.decode() if isinstance(payload, bytes) else ""
            if part.get_filename() is not None:
                raise ClickHouseError.of(NOT_IMPLEMENTED, "External data (multipart files) is not supported")
            if name == "query":
                self.query = value
            elif name.startswith("param_"):
                self.params[name[6:]] = value
