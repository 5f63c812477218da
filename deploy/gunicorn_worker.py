"""The front door's gunicorn worker: gevent, serving HTTP with gevent's pywsgi.

gunicorn's own gevent worker parses HTTP in gunicorn's Python parser; gevent's
pywsgi server (gunicorn's `gevent_pywsgi` worker) does the same work for less:
3,680 against 3,180 requests/s on the single-event endpoint at the same CPU
(bench/README.md). One thing is lost: pywsgi waits for a keep-alive client's
next request for ever, so a stopping worker (which waits for open connections)
took `graceful_timeout` to stop whenever a client kept a connection open. This
worker gives an idle connection `keepalive` seconds, as gunicorn's own does.
"""
from __future__ import annotations

import gevent
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler


class _Handler(PyWSGIHandler):
    _served = False  # one handler per connection
    _head: bytearray | None = None  # the response head, held until the body's first piece is sent

    def _write_with_headers(self, data):
        # pywsgi sends the response head and the body in two sends; one costs half the syscalls and, on
        # loopback, half the receiving side's TCP work (bench/README.md: ~14 % of a worker's CPU went to
        # sending at 3,000 requests/s). The head is the first thing sent; the next send carries both.
        self._head = bytearray()
        try:
            super()._write_with_headers(data)
        finally:
            head, self._head = self._head, None
            if head:  # no body followed
                super()._sendall(head)

    def _sendall(self, data):
        head = self._head
        if head is None:
            super()._sendall(data)
        elif not head:
            head += data
        else:
            self._head = None
            super()._sendall(head + data)

    def read_requestline(self):
        # '' closes the connection, as at EOF: after keepalive idle seconds, or (keepalive 0,
        # keep-alive off) after the first request.
        idle = self.server.idle_seconds
        if idle <= 0 and self._served:
            return ""
        self._served = True
        with gevent.Timeout(idle if idle > 0 else None, False):
            return super().read_requestline()
        return ""


class Worker(GeventPyWSGIWorker):
    wsgi_handler = _Handler

    def init_process(self):
        # max_accept 1, as gunicorn's own gevent worker sets with several workers: gevent's default takes up
        # to 100 waiting connections per wake-up, so a burst of new clients all landed on one worker.
        self.server_class = type("Server", (self.server_class,), {"idle_seconds": self.cfg.keepalive,
                                                                   "max_accept": 1 if self.cfg.workers > 1 else 100})
        super().init_process()
