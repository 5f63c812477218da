"""The front door's gunicorn worker: gevent, serving HTTP with gevent's pywsgi.

gunicorn's own gevent worker parses HTTP in gunicorn's Python parser; gevent's
pywsgi server (gunicorn's `gevent_pywsgi` worker) does the same work for less:
3,680 against 3,180 requests/s on the single-event endpoint at the same CPU
(bench/README.md). One thing is lost: pywsgi waits for a keep-alive client's
next request for ever, so a stopping worker (which waits for open connections)
took `graceful_timeout` to stop whenever a client kept a connection open. This
worker gives an idle connection `keepalive` seconds, as gunicorn's own does.

The worker freezes what it built at start out of the garbage collector's
sight (`Worker.load_wsgi`). Two of pywsgi's costs per request are cut (py-spy at 3,000 requests/s): its
header parsing (the email package, then the lines formatted again and split
again for the environ: ~9 % of a worker's CPU) is `RequestHeaders`, and
gunicorn's access-log hook (~3 %) is skipped when the access log is off.
"""
from __future__ import annotations

import gc
import re

import gevent
import orjson
from gevent.pywsgi import _InvalidClientRequest
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler, PyWSGIServer

from deploy.worker_balance import RETRY_SECONDS, ConnectionBalance

MAX_HEADER_LINE = 65536  # http.client's limits, which pywsgi applies through it
MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")  # a header name (RFC 9110 token)


class RequestHeaders:
    """A request's header block, read from the connection: what pywsgi asks of its headers object
    (`status`, `get`, `getheader`, `typeheader`, `del h[name]`, `headers`) and what gunicorn's access log
    asks (`items`), without the email package.

    Stricter than the email parser, as RFC 9112 allows: a line that is not `name: value` (no colon, a
    name that is not a token, white space before the colon) and a folded line (obs-fold) are a 400, where
    the email parser ended the headers there or joined the line to the last value."""
    status = ""

    def __init__(self, fp, *_):
        self._pairs: list[tuple[str, str]] = []  # (name as sent, value), in order
        self._first: dict[str, str] = {}  # lower-case name → its first value, as email.message.Message.get
        while True:
            line = fp.readline(MAX_HEADER_LINE + 1)
            if len(line) > MAX_HEADER_LINE:
                self.status = "Line too long"  # pywsgi answers 400 with it, as for http.client's LineTooLong
                return
            if line in (b"\r\n", b"\n", b""):
                return
            if len(self._pairs) >= MAX_HEADERS:
                raise _InvalidClientRequest(f"more than {MAX_HEADERS} headers")
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or not _TOKEN.match(name):
                raise _InvalidClientRequest(f"invalid header line: {line[:100]!r}")
            value = value.strip()
            self._pairs.append((name, value))
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default=None):
        return self._first.get(name.lower(), default)

    getheader = get

    @property
    def typeheader(self):
        return self._first.get("content-type")

    def __delitem__(self, name: str) -> None:
        lower = name.lower()
        self._first.pop(lower, None)
        self._pairs = [(n, v) for n, v in self._pairs if n.lower() != lower]

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    @property
    def headers(self):
        """The lines as pywsgi's own headers object gives them (its `_headers` reads these)."""
        return [f"{name}: {value}\r\n" for name, value in self._pairs]

    def environ_items(self):
        """(`HTTP_*` key, value) for the environ, as pywsgi's `_headers`: names with `_` are left out (they
        would be indistinguishable from `-` there), Content-Type and -Length have keys of their own."""
        for name, value in self._pairs:
            if "_" in name:
                continue
            key = name.replace("-", "_").upper()
            if key != "CONTENT_TYPE" and key != "CONTENT_LENGTH":
                yield "HTTP_" + key, value


class _Handler(PyWSGIHandler):
    _served = False  # one handler per connection
    _head: bytearray | None = None  # the response head, held until the body's first piece is sent
    MessageClass = RequestHeaders

    def _headers(self):
        return self.headers.environ_items()

    def _handle_client_error(self, ex):
        # pywsgi's answer to a request it cannot parse is an empty 400; the API's errors all say what is wrong.
        super()._handle_client_error(ex)  # logs it
        reason = getattr(ex, "formatted_message", None) or str(ex) or type(ex).__name__
        body = orjson.dumps({"error": "invalid_http", "message": f"the request is not valid HTTP/1.1: {reason[:200]}"})
        return "400", (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def log_request(self):
        # gunicorn's hook builds the access-log record (timestamps, a response object, the headers) before
        # its logger finds out that the access log is off.
        if getattr(self.server.log, "access_log_enabled", True):
            super().log_request()

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


class _Server(PyWSGIServer):
    idle_seconds: float  # set per worker (Worker.init_process)
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


class Worker(GeventPyWSGIWorker):
    wsgi_handler = _Handler

    def init_process(self):
        # max_accept 1, as gunicorn's own gevent worker sets with several workers: gevent's default takes up
        # to 100 waiting connections per wake-up, so a burst of new clients all landed on one worker. That
        # was not enough (a client opening its connections at once still often pinned one worker): with
        # several workers each also keeps its share of the connections (deploy/worker_balance.py).
        several = self.cfg.workers > 1
        self.server_class = type("Server", (_Server,), {
            "idle_seconds": self.cfg.keepalive, "max_accept": 1 if several else 100,
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
