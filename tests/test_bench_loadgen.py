"""bench/loadgen.c, the benchmark's load generator, built by bench.loadgen with the system's C compiler and
run against a small keep-alive HTTP server in this process (standard library, one thread per connection)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import loadgen


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    delay = 0.0
    seen: list[bytes] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(body)
        time.sleep(self.delay)
        if self.path == "/v1/batch/events":
            answer = json.dumps({"status": "ok", "accepted": len(json.loads(body)["events"])}).encode()
        else:
            answer = b'{"status":"ok"}'
        self.send_response(200 if b"bad" not in body else 400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    def start(delay=0.0):
        handler = type("Handler", (_Handler,), {"delay": delay, "seen": []})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}", handler.seen

    started = []
    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_open_loop_sends_every_due_request_and_counts_the_answers(server, tmp_path):
    url, seen = server()
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_bytes(b'{"n":1}\n{"n":2}\n{"bad":3}\n')
    progress = []
    result = loadgen.spawn(
        url, "/v1/events", str(bodies), "k", seconds=1.0, conns=4, open_rate=300, on_progress=progress.append
    )
    assert result["sent"] == 300 and result["unanswered"] == 0 and result["errors"] == 0
    assert result["statuses"] == {"200": 200, "400": 100}  # bodies are sent in turn
    assert result["ok"] == result["events"] == 200 == result["latency_ms"]["n"]
    assert sorted(seen) == sorted([b'{"n":1}', b'{"n":2}', b'{"bad":3}'] * 100)
    assert 0.9 < result["seconds_sending"] < 1.2 and result["mode"] == "open"
    assert len(progress) >= 4 and progress[-1]["ok"] == 200 and progress[-1]["non200"] == 100
    assert abs(progress[-1]["t"] - time.monotonic()) < 5  # CLOCK_MONOTONIC, as time.monotonic()


def test_open_loop_latency_counts_from_when_a_request_was_due(server, tmp_path):
    # One connection to a server that takes 50 ms a request, offered 100 requests/s: the server answers
    # 20 a second, so requests wait for the connection, and that wait is part of their latency (no
    # coordinated omission), while the time from send to answer stays ~50 ms.
    url, _ = server(delay=0.05)
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_bytes(b'{"n":1}\n')
    result = loadgen.spawn(url, "/v1/events", str(bodies), "k", seconds=0.5, conns=1, open_rate=100)
    assert result["ok"] == 50
    assert 45 <= result["service_ms"]["p50"] < 150
    assert result["latency_ms"]["max"] > 1500  # the last request was due at 0.49 s and answered at ~2.5 s
    assert result["latency_ms"]["p50"] > 10 * result["service_ms"]["p50"] / 2


def test_a_warm_up_request_per_connection_is_sent_first_and_not_counted(server, tmp_path):
    url, seen = server()
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_bytes(b'{"n":1}\n')
    result = loadgen.spawn(
        url, "/v1/events", str(bodies), "k", seconds=0.5, conns=4, open_rate=100, warmup=True
    )
    assert len(seen) == 54  # 4 before the clock, 50 in the run
    assert result["warmup_requests"] == result["warmup_ok"] == 4
    assert result["sent"] == result["ok"] == result["latency_ms"]["n"] == 50 and result["statuses"] == {
        "200": 50
    }


def test_closed_loop_on_the_batch_endpoint_counts_accepted_events(server, tmp_path):
    url, seen = server()
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_bytes(json.dumps({"events": [{"n": i} for i in range(1000)]}).encode() * 1 + b"\n")
    result = loadgen.spawn(url, "/v1/batch/events", str(bodies), "k", seconds=0.5, conns=2, max_requests=20)
    assert result["mode"] == "closed" and result["sent"] == result["ok"] == len(seen) == 20
    assert result["events"] == 20_000 and result["statuses"] == {"200": 20}
    assert all(len(json.loads(body)["events"]) == 1000 for body in seen)  # large bodies written whole


def test_load_goes_only_to_loopback(tmp_path):
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_bytes(b"{}\n")
    with pytest.raises(RuntimeError, match="only ever sent to 127.0.0.1"):
        loadgen.spawn("http://10.1.2.3:80", "/v1/events", str(bodies), "k", seconds=1, conns=1, open_rate=1)
