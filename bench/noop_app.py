"""The HTTP ceiling: endpoints that do nothing but what every request must do.

`app` is a bare WSGI callable: it reads the whole request body and answers a small JSON document, the least
any POST /v1/events can cost on gunicorn's gevent workers. `flask_app` is the same on Flask (routing,
request/response objects), to separate the framework's share from the front door's own work. Both are served
by bench/noop_gunicorn.conf.py with deploy/gunicorn.conf.py's worker class, workers, connections and
keep-alive.
"""

from __future__ import annotations

_BODY = b'{"status":"ok","event_id":"evt_01jb0000000000000000000000"}'
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_BODY)))]


def app(environ, start_response):
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    remaining = length
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 20))
        if not chunk:
            break
        remaining -= len(chunk)
    start_response("200 OK", list(_HEADERS))
    return [_BODY]


def _make_flask():
    from flask import Flask, Response, request

    flask_app = Flask(__name__)

    @flask_app.post("/v1/events")
    @flask_app.post("/v1/batch/events")
    def ingest():
        request.stream.read()
        return Response(_BODY, mimetype="application/json")

    @flask_app.get("/healthz")
    def healthz():
        return Response(b'{"status":"ok"}', mimetype="application/json")

    return flask_app


def __getattr__(name):
    if name == "flask_app":
        return _make_flask()
    raise AttributeError(name)
