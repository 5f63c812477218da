"""The front door's gunicorn worker: gevent, one process per core, each serving many connections at once on
greenlets (deploy/gunicorn.conf.py says why).

gevent's pywsgi server accepts the connections and builds the WSGI environ's fixed part. Two parts of the
worker replace library internals, each behind a switch whose off position is the library as it ships
(deploy/settings.py; README's configuration table; what each earns: bench/README.md):
- FLOKIT_HTTP_PARSER=httptools (default) serves each connection with deploy/http_handler.py (llhttp, in C)
  instead of pywsgi's own handler (`pywsgi`: gunicorn's PyWSGIHandler, gevent's WSGIHandler with gunicorn's
  access log). Only the httptools handler has the request deadlines, the idle keep-alive timeout, the JSON
  400/431 for what cannot be parsed, and the room it makes at the connection limit, so slow clients cannot
  keep new ones out: the worker's pool holds one connection more than gunicorn's worker_connections, and the
  handler of the connection that takes it closes the one that has waited longest for its client.
- FLOKIT_CONNECTION_BALANCE=on (default off) overrides gevent's private accept step
  (`_BalancedServer._do_read`): a worker over its share of the connections leaves the next one to the others
  (deploy/worker_balance.py). Off: gevent's own accept loop.

In both positions a worker accepts one connection per wake-up (`max_accept`, as gunicorn's own gevent worker
does with several workers) and freezes what it built at start out of the garbage collector's sight
(`Worker.load_wsgi`).
"""

from __future__ import annotations

import gc
from typing import Any, cast

import gevent
from gunicorn.workers.ggevent import GeventWorker, PyWSGIHandler, PyWSGIServer

from deploy.http_handler import HttptoolsHandler, WaitingConnections
from deploy.settings import Settings
from deploy.worker_balance import RETRY_SECONDS, ConnectionBalance


class _Server(PyWSGIServer):
    max_accept = 1  # one connection per wake-up (Worker.init_process says why)
    # set per worker (Worker.init_process); read by the httptools handler
    idle_seconds: float  # gunicorn's keepalive: an idle connection is closed after it
    max_body_bytes: (
        int  # the front door's body limit: what the handler buffers at most (+1) before the app runs
    )
    head_timeout: float  # deadlines of a request's arrival (deploy/http_handler.py)
    body_timeout: float
    body_min_bytes_per_second: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = WaitingConnections()  # its connections waiting for their clients, longest first


class _BalancedServer(_Server):
    """FLOKIT_CONNECTION_BALANCE=on: gevent's private `_do_read` (called when the listening socket has a
    connection waiting) and `_timer` are overridden."""

    balance: ConnectionBalance | None = None  # with several workers

    def _do_read(self) -> None:
        # A worker over its share leaves the connection to the others (deploy/worker_balance.py) and looks
        # again shortly, as gevent's own accept-error delay does.
        if self.balance is not None and self.balance.should_wait(len(self.pool)):
            self.stop_accepting()
            self._timer = self.loop.timer(RETRY_SECONDS)
            self._timer.start(self._start_accepting_if_started)
            return
        super()._do_read()

    def start(self) -> None:
        super().start()
        if self.balance is not None:
            gevent.spawn(self._publish_every_second)

    def _publish_every_second(self) -> None:
        assert self.balance is not None
        while not self.closed:
            self.balance.publish(len(self.pool))
            gevent.sleep(1.0)

    def close(self) -> None:
        if self.balance is not None:
            self.balance.leave()
        super().close()


class Worker(GeventWorker):
    server_class: type[_Server] = _BalancedServer
    wsgi_handler: type = HttptoolsHandler

    def init_process(self) -> None:
        # max_accept 1, as gunicorn's own gevent worker sets with several workers: gevent's default takes up
        # to 100 waiting connections per wake-up, so a burst of new clients all landed on one worker. (With
        # the balance on, each worker also keeps its share of the connections: deploy/worker_balance.py.)
        settings = Settings.from_env()
        httptools = settings.api_http_parser == "httptools"
        self.wsgi_handler = HttptoolsHandler if httptools else PyWSGIHandler
        if httptools:  # room for the connection whose handler makes room (deploy/http_handler.py)
            self.worker_connections = self.cfg.worker_connections + 1
        attributes: dict[str, Any] = {
            "connection_limit": self.cfg.worker_connections,
            "idle_seconds": self.cfg.keepalive,
            "max_body_bytes": settings.max_body_bytes,
            "head_timeout": settings.api_head_timeout_seconds,
            "body_timeout": settings.api_body_timeout_seconds,
            "body_min_bytes_per_second": settings.api_body_min_bytes_per_second,
        }
        if settings.api_connection_balance:
            attributes["balance"] = ConnectionBalance(self.age) if self.cfg.workers > 1 else None
        base = _BalancedServer if settings.api_connection_balance else _Server
        self.server_class = cast(type[_Server], type("Server", (base,), attributes))
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # What is built by now (modules, the app, its validators) lives as long as the worker: frozen, out of
        # the cyclic collector's sight. A full collection then scans a fraction of the objects and stops the
        # worker for a fraction of the time, every request in flight waiting for it (bench/README.md).
        gc.collect()
        gc.freeze()
