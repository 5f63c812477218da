"""The client is its own distribution (client/setup.cfg) with one runtime dependency, and importing it loads
nothing of the server's."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "client"


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


def test_the_package_build_ships_the_typed_marker(tmp_path):
    """PEP 561: a py.typed file in the package is what lets an app's type checker read the client's
    annotations; it must be among the files a build installs (setuptools' build_py, what a wheel holds),
    not only in the source tree."""
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import setuptools; setuptools.setup()",
            "-q",
            "build_py",
            "-d",
            str(tmp_path),
        ],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "flokit_client" / "client.py").is_file()
    assert (tmp_path / "flokit_client" / "py.typed").is_file()
