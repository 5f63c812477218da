"""The front door's gunicorn worker: gevent, HTTP parsed by httptools.

One process per core, each serving many connections at once on greenlets
(deploy/gunicorn.conf.py says why). gevent's pywsgi server accepts them and
builds the WSGI environ's fixed part; each connection is served by
deploy/http_handler.py (llhttp, in C) instead of pywsgi's Python parser: at
saturation on the single-event endpoint 6,540-7,519 against 5,946-6,527
requests/s (bench/README.md), and before that pywsgi against gunicorn's own
parser 3,680 against 3,180.

Three more things the worker does: it spreads connections over the workers
(deploy/worker_balance.py); at its connection limit it makes room for a new
connection by closing the one that has waited longest for its client, so slow
clients cannot keep new ones out (`_Server._do_read`); and it freezes what it
built at start out of the garbage collector's sight (`Worker.load_wsgi`).
"""
from __future__ import annotations

import gc

import gevent
from gunicorn.workers.ggevent import GeventWorker, PyWSGIServer

from deploy.http_handler import HttptoolsHandler, WaitingConnections
from deploy.settings import Settings
from deploy.worker_balance import RETRY_SECONDS, ConnectionBalance


class _Server(PyWSGIServer):
    max_accept = 1  # one connection per wake-up (Worker.init_process says why)
    # set per worker (Worker.init_process)
    idle_seconds: float  # gunicorn's keepalive: an idle connection is closed after it
    max_body_bytes: int  # the front door's body limit: what the handler buffers at most (+1) before the app runs
    head_timeout: float  # deadlines of a request's arrival (deploy/http_handler.py)
    body_timeout: float
    body_min_bytes_per_second: int
    balance: ConnectionBalance | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.waiting = WaitingConnections()  # its connections waiting for their clients, longest first

    def _do_read(self):
        # Called when the listening socket has a connection waiting. A worker over its share leaves it to
        # the others (deploy/worker_balance.py) and looks again shortly, as gevent's own accept-error delay does.
        if self.balance is not None and self.balance.should_wait(len(self.pool)):
            self.stop_accepting()
            self._timer = self.loop.timer(RETRY_SECONDS)
            self._timer.start(self._start_accepting_if_started)
            return
        if self.full():
            # At its connection limit (gunicorn's worker_connections) gevent stops accepting until a connection
            # ends; new clients then wait in the listen queue for as long as the ones held take, and slow clients
            # (a byte of head a second: slowloris) kept them all, coming back as soon as a deadline closed one.
            # So the connection that has waited longest for its client gives way: its slot is free a moment later
            # and gevent accepts then. (With several workers each may give one way for the same new connection;
            # the one that does not get it has a free slot for the next.) Requests being run never give way: with
            # only those, new clients wait, which is the limit doing its job.
            self.waiting.give_way()
        super()._do_read()

    def start(self):
        super().start()
        if self.balance is not None:
            gevent.spawn(self._publish_every_second)

    def _publish_every_second(self):
        while not self.closed:
            self.balance.publish(len(self.pool))
            gevent.sleep(1.0)

    def close(self):
        if self.balance is not None:
            self.balance.leave()
        super().close()


class Worker(GeventWorker):
    server_class = _Server
    wsgi_handler = HttptoolsHandler

    def init_process(self):
        # max_accept 1, as gunicorn's own gevent worker sets with several workers: gevent's default takes up
        # to 100 waiting connections per wake-up, so a burst of new clients all landed on one worker. That
        # was not enough (a client opening its connections at once still often pinned one worker): with
        # several workers each also keeps its share of the connections (deploy/worker_balance.py). With one
        # worker too: gevent stops watching for connections when a wake-up's accepts fill the worker, and at
        # the limit each new connection must wake _do_read, which makes room for it.
        several = self.cfg.workers > 1
        settings = Settings.from_env()
        self.server_class = type("Server", (_Server,), {
            "idle_seconds": self.cfg.keepalive,
            "max_body_bytes": settings.max_body_bytes,
            "head_timeout": settings.api_head_timeout_seconds, "body_timeout": settings.api_body_timeout_seconds,
            "body_min_bytes_per_second": settings.api_body_min_bytes_per_second,
            "balance": ConnectionBalance(self.age) if several else None})
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        # What is built by now (modules, the app, its validators) lives as long as the worker: frozen, out of
        # the cyclic collector's sight. A full collection then scans ~15,000 objects instead of ~80,000 and
        # stops the worker for ~9 ms instead of 30-80 ms, once every few seconds at 3,000 requests/s
        # (gc.callbacks, bench/README.md): every request in flight waited for it.
        gc.collect()
        gc.freeze()
