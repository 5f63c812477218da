"""The front door's gunicorn worker: gevent, HTTP parsed by httptools.

One process per core, each serving many connections at once on greenlets
(deploy/gunicorn.conf.py says why). gevent's pywsgi server accepts them and
builds the WSGI environ's fixed part; each connection is served by
deploy/http_handler.py (llhttp, in C) instead of pywsgi's Python parser: at
saturation on the single-event endpoint 6,540-7,519 against 5,946-6,527
requests/s (bench/README.md), and before that pywsgi against gunicorn's own
parser 3,680 against 3,180.

Two more things the worker does: it spreads connections over the workers
(deploy/worker_balance.py), and it freezes what it built at start out of the
garbage collector's sight (`Worker.load_wsgi`).
"""
from __future__ import annotations

import gc

import gevent
from gunicorn.workers.ggevent import GeventWorker, PyWSGIServer

from deploy.http_handler import HttptoolsHandler
from deploy.settings import Settings
from deploy.worker_balance import RETRY_SECONDS, ConnectionBalance


class _Server(PyWSGIServer):
    # set per worker (Worker.init_process)
    idle_seconds: float  # gunicorn's keepalive: an idle connection is closed after it
    max_body_bytes: int  # the front door's body limit: what the handler buffers at most (+1) before the app runs
    balance: ConnectionBalance | None = None

    def _do_read(self):
        # Called when the listening socket has a connection waiting. A worker over its share leaves it to
        # the others (deploy/worker_balance.py) and looks again shortly, as gevent's own accept-error delay does.
        if self.balance is not None and self.balance.should_wait(len(self.pool)):
            self.stop_accepting()
            self._timer = self.loop.timer(RETRY_SECONDS)
            self._timer.start(self._start_accepting_if_started)
            return
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
        # several workers each also keeps its share of the connections (deploy/worker_balance.py).
        several = self.cfg.workers > 1
        self.server_class = type("Server", (_Server,), {
            "idle_seconds": self.cfg.keepalive, "max_accept": 1 if several else 100,
            "max_body_bytes": Settings.from_env().max_body_bytes,
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
