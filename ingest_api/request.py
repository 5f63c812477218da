"""What the ingest handlers read of a request, straight from the WSGI environ.

Werkzeug's Request builds header views, parses the content type and wraps the
input stream lazily, behind cached properties: a measurable share of a single-event
request's CPU (bench/README.md) for the five things the handlers ask. This reads
them from the environ, with Werkzeug's own functions where parsing is involved.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, overload

from werkzeug.http import parse_options_header
from werkzeug.wsgi import get_content_length, get_input_stream

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

_JSON: tuple[str, dict[str, str]] = ("application/json", {})


class IngestRequest:
    __slots__ = ("environ",)

    def __init__(self, environ: WSGIEnvironment):
        self.environ = environ

    @property
    def path(self) -> str:
        path: str = self.environ.get("PATH_INFO", "")
        return path

    @overload
    def header(self, name: str) -> str | None: ...
    @overload
    def header(self, name: str, default: str) -> str: ...
    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header by its HTTP name (Content-Type and Content-Length are not HTTP_* in WSGI)."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value: str | None = self.environ.get(key, default)
        return value

    @property
    def content_type(self) -> str | None:
        value: str | None = self.environ.get("CONTENT_TYPE")
        return value

    def media_type(self) -> tuple[str, dict[str, str]]:
        """The content type's lowercased mimetype and its parameters."""
        content_type: str = self.environ.get("CONTENT_TYPE", "")
        if content_type == "application/json":  # what nearly every client sends
            return _JSON
        mimetype, params = parse_options_header(content_type)
        return mimetype.lower(), params

    @property
    def content_length(self) -> int | None:
        return get_content_length(self.environ)

    @property
    def stream(self) -> IO[bytes]:
        return get_input_stream(self.environ)
