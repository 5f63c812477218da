"""The warehouse process: one chdb data directory, served over ClickHouse's HTTP interface on loopback."""

from __future__ import annotations

import signal
import socket
import socketserver
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from deploy.settings import Settings
from deploy.warehouse.engine import Engine
from deploy.warehouse.handler import Handler
from deploy.warehouse.sessions import Sessions


class WarehouseServer(ThreadingHTTPServer):
    """A thread per connection; all of them share one Engine.

    Tracks requests in flight so that `stop()` can finish them while dropping idle keep-alive connections.
    """

    daemon_threads = True  # idle keep-alive threads must not hold up exit; busy ones are waited for in stop()
    idle_timeout = 60.0  # seconds a keep-alive connection may sit idle
    io_timeout = 300.0  # seconds a single socket read or write may block (clickhouse-connect's own default)

    def __init__(self, address: tuple[str, int], engine: Engine):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.engine = engine
        self.sessions = Sessions()
        self.stopping = False
        self._in_flight = 0
        self._idle = threading.Condition()

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip nothing here uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.bound_address()

    def bound_address(self) -> tuple[str, int]:
        """(host, port) the socket is bound to (the real port when bound to port 0)."""
        host, port = self.socket.getsockname()[:2]
        return host, port

    def request_started(self) -> bool:
        with self._idle:
            if self.stopping:
                return False
            self._in_flight += 1
            return True

    def request_finished(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish, then shut the engine down cleanly."""
        with self._idle:
            self.stopping = True
        self.shutdown()  # ends serve_forever (which runs on another thread)
        self.server_close()
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        self.engine.close()


def serve(settings: Settings) -> None:
    """Serve `settings.data_dir / "warehouse"` on `settings.warehouse_bind` until SIGTERM or SIGINT.

    Prints "warehouse listening on http://HOST:PORT" (the real port when bound to port 0) once ready.
    """
    host, _, port = settings.warehouse_bind.rpartition(":")
    data_dir = Path(settings.data_dir) / "warehouse"
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(str(data_dir.resolve()))
    try:
        server = WarehouseServer((host.strip("[]") or "127.0.0.1", int(port)), engine)
    except BaseException:
        engine.close()
        raise
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, name="warehouse-accept", daemon=True).start()
    bound_host, bound_port = server.bound_address()
    bound_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    print(f"warehouse listening on http://{bound_host}:{bound_port}", flush=True)
    while not stop.wait(1.0):
        pass
    server.stop()


def main() -> None:
    serve(Settings.from_env())
    sys.exit(0)
