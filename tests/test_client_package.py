"""The client is its own distribution (client/setup.cfg) with one runtime dependency, and importing it loads
nothing of the server's."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys


def test_one_runtime_dependency():
    assert importlib.metadata.requires("flokit-client") == ["urllib3<3,>=2.0"]


def test_importing_it_loads_nothing_of_the_server():
    probe = "import sys, flokit_client; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    # -I: isolated, so the repository (cwd) is not on the path: the
    # installed distribution is what is imported.
    out = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "urllib3" in loaded and "flokit_client" in loaded
    server_side = {
        "ingest_api",
        "consumer",
        "deploy",
        "schemas",
        "flask",
        "kafka",
        "redis",
        "orjson",
        "marshmallow",
        "gevent",
        "clickhouse_connect",
        "chdb",
        "requests",
    }
    assert not loaded & server_side, loaded & server_side
