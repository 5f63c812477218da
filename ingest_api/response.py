"""The API's responses: every answer is a JSON document as a plain WSGI app."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from werkzeug.http import HTTP_STATUS_CODES

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class JsonResponse:
    """A JSON answer as a plain WSGI app. Werkzeug's Response, with all it can do, cost a measurable share of
    a single-event request's CPU (bench/README.md), for a status, a few headers and a body. Flask takes it
    from views and error handlers as it takes any WSGI app."""

    __slots__ = ("status_code", "body", "headers")

    def __init__(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None):
        self.status_code = status
        self.body = body
        self.headers = dict(headers) if headers else {}

    def get_data(self) -> bytes:
        return self.body

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(
            _status_line(self.status_code),
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(self.body))),
                *self.headers.items(),
            ],
        )
        return [self.body]


@functools.cache
def _status_line(status: int) -> str:
    return f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}"  # as Werkzeug's Response writes it


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JsonResponse:
    return JsonResponse(orjson.dumps(body), status, headers)
