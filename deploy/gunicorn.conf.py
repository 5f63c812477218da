"""gunicorn settings for `flokit api`, derived from the FLOKIT_* environment.

gthread workers: each worker process runs requests on a few threads, so the
time a request spends waiting for Kafka's acknowledgement overlaps with other
requests' parsing and validation; one process per core carries the CPU work.
No preload: the app (its Kafka producer, its state connections) is built in
each worker after the fork.
"""
from deploy.settings import Settings

_settings = Settings.from_env()

wsgi_app = "ingest_api:create_app()"
bind = _settings.api_bind
workers = _settings.api_workers
worker_class = "gthread"
threads = _settings.api_threads
keepalive = 30
graceful_timeout = 30
timeout = 60
# The access log never includes headers, so API keys are not logged.
accesslog = None
errorlog = "-"
loglevel = "warning"
