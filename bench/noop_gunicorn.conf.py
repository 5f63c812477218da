"""gunicorn settings for the no-op ceiling: deploy/gunicorn.conf.py's own values (worker class, workers,
connections, keep-alive, timeouts, logging), read from that file with the same FLOKIT_* environment, with only
the application swapped for bench.noop_app (BENCH_NOOP_APP picks `app` or `flask_app`)."""

import os
import runpy
from pathlib import Path

_deploy = runpy.run_path(str(Path(__file__).resolve().parent.parent / "deploy" / "gunicorn.conf.py"))
for _name in (
    "bind",
    "workers",
    "worker_class",
    "worker_connections",
    "keepalive",
    "graceful_timeout",
    "timeout",
    "accesslog",
    "errorlog",
    "loglevel",
):
    globals()[_name] = _deploy[_name]

wsgi_app = os.environ.get("BENCH_NOOP_APP", "bench.noop_app:app")
