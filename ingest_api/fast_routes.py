"""The two ingest routes as plain WSGI, in front of the Flask app.

Flask's per-request machinery (request and app contexts, URL matching,
before/after hooks, response finalising) was a large share of a single-event
request's CPU (bench/README.md). POST /v1/events and POST /v1/batch/events
skip it: the same handler (events.ingest) gets the environ as an
IngestRequest, and any exception becomes the same error response Flask's
handlers give (errors.error_response). Every other method and path goes to
Flask.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask

from . import events
from .errors import error_response
from .frontdoor import FrontDoor
from .request import IngestRequest

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


class FastRoutes:
    def __init__(self, app: Flask):
        self._flask = app.wsgi_app
        self._ctx: FrontDoor = app.extensions["flokit"]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        batch = events.ROUTES.get(environ.get("PATH_INFO", ""))
        if batch is None or environ.get("REQUEST_METHOD") != "POST":
            return self._flask(environ, start_response)
        try:
            response = events.ingest(self._ctx, IngestRequest(environ), batch)
        except Exception as exc:
            response = error_response(exc)
        return response(environ, start_response)
