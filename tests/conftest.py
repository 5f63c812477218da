"""Session-wide real services: a Kafka broker and Redis, started through the
scripts in deploy/ (a broker or Redis already running on the same port is reused)."""

from __future__ import annotations

import os
import warnings

import pytest
from kafka.errors import KafkaError

from deploy.queue.kafka_queue import create_topics
from deploy.settings import Settings
from ingest_api.state.redis_state import RedisState
from ingest_api.state.sqlite_state import SqliteState

from .services import SWITCHES, delete_issued_topics, run_script, unique

KAFKA_PORT = os.environ.get("KAFKA_PORT", "19092")
REDIS_PORT = os.environ.get("REDIS_PORT", "16379")


# Tests of a property that only one position of a front-door switch provides (deploy/gunicorn_worker.py) say
# so with one of these marks and run their front door in that position (tests/services.py: HTTPTOOLS,
# BALANCE_ON). A run that asks for the other position (.ci/run's second pass) skips them, saying why: they
# would only repeat.
ONLY_IN = {
    "httptools_only": ("FLOKIT_HTTP_PARSER", "httptools"),
    "balance_only": ("FLOKIT_CONNECTION_BALANCE", "on"),
}


def pytest_configure(config):
    for mark, (variable, position) in ONLY_IN.items():
        config.addinivalue_line("markers", f"{mark}: a property only {variable}={position} provides")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark, (variable, position) in ONLY_IN.items():
            asked = SWITCHES.get(variable)
            if item.get_closest_marker(mark) and asked is not None and asked.lower() != position:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"a property only {variable}={position} provides; this run asks for {asked}"
                    )
                )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    run_script("kafka.sh", "start", KAFKA_PORT=KAFKA_PORT)
    bootstrap = f"127.0.0.1:{KAFKA_PORT}"
    yield bootstrap
    # The broker's data outlives the session (and the broker itself with FLOKIT_KEEP_SERVICES): drop the
    # topics this session made, or every run leaves hundreds of partitions behind and the broker spends
    # more CPU on each later run and benchmark (with 880 left over it used 3-4x the CPU under the same load).
    # Only ours, by name: a bench or another session may be using the same broker.
    try:
        delete_issued_topics(bootstrap)
    except KafkaError as exc:
        warnings.warn(f"could not delete this session's topics: {exc}", stacklevel=2)
    if os.environ.get("FLOKIT_KEEP_SERVICES") != "1":
        run_script("kafka.sh", "stop", KAFKA_PORT=KAFKA_PORT)


@pytest.fixture(scope="session")
def redis_url() -> str:
    run_script("redis.sh", "start", REDIS_PORT=REDIS_PORT)
    yield f"redis://127.0.0.1:{REDIS_PORT}/0"
    if os.environ.get("FLOKIT_KEEP_SERVICES") != "1":
        run_script("redis.sh", "stop", REDIS_PORT=REDIS_PORT)


@pytest.fixture(scope="module")
def topic(kafka_bootstrap) -> str:
    """A fresh events topic per test module, so modules never see each other's records."""
    name = unique("events")
    create_topics(kafka_bootstrap, {name: 4, name + ".dlq": 4})
    return name


@pytest.fixture(scope="module")
def production_env(kafka_bootstrap, redis_url, topic, tmp_path_factory) -> dict[str, str]:
    """The environment of a front door on the production services (Kafka and Redis)."""
    return {
        "FLOKIT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "FLOKIT_REDIS_URL": redis_url,
        "FLOKIT_TOPIC": topic,
        "FLOKIT_DLQ_TOPIC": topic + ".dlq",
        "FLOKIT_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "FLOKIT_ENQUEUE_TIMEOUT_SECONDS": "5",
    }


@pytest.fixture(scope="module")
def redis_state(redis_url) -> RedisState:
    return RedisState(redis_url)


@pytest.fixture(params=["redis", "sqlite"])
def state_store(request, tmp_path):
    """A fresh front-door state store of each kind (the tests using it run against both)."""
    if request.param == "redis":
        store = RedisState(request.getfixturevalue("redis_url"), namespace=unique("test"))
    else:
        store = SqliteState(tmp_path / "state.sqlite3")
    yield store
    store.close()


@pytest.fixture(scope="module")
def workspace_key(redis_state):
    """A new workspace and a key for it: (workspace, key)."""

    def make(**settings):
        workspace = unique("ws")
        if settings:
            redis_state.configure_workspace(workspace, **settings)
        return workspace, redis_state.create_key(workspace)

    return make


@pytest.fixture(scope="module")
def settings_for(production_env):
    return Settings.from_env(production_env)
