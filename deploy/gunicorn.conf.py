"""gunicorn settings for `flokit api`, derived from the FLOKIT_* environment.

gevent workers, one process per core: each worker serves many requests at once
on greenlets, so the time one request waits for Redis or for Kafka's
acknowledgement goes to the others. Against gthread workers they served more
requests with the same CPU (bench/README.md): threads spent their time in GIL
hand-offs, greenlets switch in user space. The worker monkey-patches the
standard library before the app is imported, so kafka-python's I/O thread and
redis-py's sockets become cooperative too. How HTTP is parsed and connections
accepted: deploy/gunicorn_worker.py.

No preload: the app (its Kafka producer, its state connections) is built in
each worker after the fork.
"""

from deploy.settings import Settings

_settings = Settings.from_env()
if (
    _settings.api_body_min_bytes_per_second < 1
    or min(_settings.api_head_timeout_seconds, _settings.api_body_timeout_seconds) <= 0
):
    raise SystemExit(
        "FLOKIT_API_HEAD_TIMEOUT_SECONDS and FLOKIT_API_BODY_TIMEOUT_SECONDS must be over 0,"
        " FLOKIT_API_BODY_MIN_BYTES_PER_SECOND at least 1"
    )
if _settings.api_http_parser not in ("httptools", "pywsgi"):
    raise SystemExit(f"FLOKIT_HTTP_PARSER={_settings.api_http_parser!r} is neither httptools nor pywsgi")

wsgi_app = "deploy.components:make_app()"
bind = _settings.api_bind
workers = _settings.api_workers
worker_class = "deploy.gunicorn_worker.Worker"
worker_connections = _settings.api_connections
# A stopping worker waits for its open connections, idle keep-alive ones
# included, so this is also how long a restart can wait for an idle client.
keepalive = _settings.api_keepalive_seconds
graceful_timeout = 30
timeout = 60
# The access log never includes headers, so API keys are not logged.
accesslog = None
errorlog = "-"
loglevel = "warning"
