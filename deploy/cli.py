"""`flokit`: the one command for every part of the pipeline."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:
    from ingest_api.state.base import FrontDoorState

Command = Callable[[argparse.Namespace, Settings], int]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flokit", description="FloKit Ingest: event ingestion to ClickHouse"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "dev", help="run the whole pipeline embedded: front door, queue, consumer, warehouse"
    ).set_defaults(func=cmd_dev)
    sub.add_parser("api", help="run the HTTP front door under gunicorn").set_defaults(func=cmd_api)

    keys = sub.add_parser("keys", help="issue, list and revoke API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="issue a key for WORKSPACE; prints the key alone on stdout")
    create.add_argument("workspace")
    create.set_defaults(func=cmd_keys_create)
    keys.add_parser("list", help="list keys (never the secrets)").set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key, by its id or the key itself")
    revoke.add_argument("key")
    revoke.set_defaults(func=cmd_keys_revoke)

    ws = sub.add_parser("workspace", help="show or change a workspace's settings")
    ws.add_argument("name", nargs="?")
    ws.add_argument(
        "--rate-limit",
        type=int,
        metavar="N",
        help="requests per minute (default: FLOKIT_RATE_LIMIT_PER_MINUTE)",
    )
    ws.add_argument(
        "--events",
        choices=["custom", "strict"],
        help="custom: any snake_case event name (default); strict: only the taxonomy's names",
    )
    ws.set_defaults(func=cmd_workspace)

    kafka = sub.add_parser("kafka", help="Kafka administration").add_subparsers(dest="action", required=True)
    init = kafka.add_parser("init", help="create the events and dead-letter topics")
    init.add_argument(
        "--partitions", type=int, help="partitions of the events topic (default: FLOKIT_PARTITIONS)"
    )
    init.set_defaults(func=cmd_kafka_init)

    queue = sub.add_parser("queue", help="embedded queue (local log) administration").add_subparsers(
        dest="action", required=True
    )
    forget = queue.add_parser(
        "forget-group",
        help="drop a consumer group that is no longer used, so that it stops "
        "keeping the local log from shrinking",
    )
    forget.add_argument("group")
    forget.set_defaults(func=cmd_queue_forget_group)

    sub.add_parser(
        "warehouse", help="run the embedded ClickHouse engine behind its HTTP interface"
    ).set_defaults(func=cmd_warehouse)

    migrate = sub.add_parser(
        "migrate", help="create or update the warehouse tables and views (schemas/migrations)"
    )
    migrate.add_argument(
        "--print",
        dest="print_sql",
        action="store_true",
        help="print the statements for this topology (FLOKIT_CLICKHOUSE_CLUSTER) instead of running them",
    )
    migrate.set_defaults(func=cmd_migrate)

    sql = sub.add_parser("sql", help="run a SQL query against the warehouse and print the result")
    from .sql_cli import add_arguments as add_sql_arguments

    add_sql_arguments(sql)
    sql.set_defaults(func=cmd_sql)

    sub.add_parser("consumer", help="run one consumer worker (queue → ClickHouse)").set_defaults(
        func=cmd_consumer
    )

    args = parser.parse_args(argv)
    return args.func(args, Settings.from_env()) or 0


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from .dev import run

    return run(settings)


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    config = Path(__file__).with_name("gunicorn.conf.py")
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(config)])


def _state(settings: Settings) -> FrontDoorState:
    from .components import make_state

    return make_state(settings)


def _on_state(command: Command) -> Command:
    """A command on the front door's state store: a store that does not answer is told in a line, not a
    traceback. (The URL is not repeated: it may hold a password; Redis's message names the host.)"""

    @functools.wraps(command)
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ingest_api.state.base import StateUnavailable

        try:
            return command(args, settings)
        except StateUnavailable as exc:
            where = "FLOKIT_REDIS_URL" if settings.redis_url else f"{settings.data_dir}/frontdoor.sqlite3"
            print(f"flokit: the front door's state store ({where}) did not answer: {exc}", file=sys.stderr)
            return 1

    return run


@_on_state
def cmd_keys_create(args: argparse.Namespace, settings: Settings) -> int:
    print(_state(settings).create_key(args.workspace))
    return 0


@_on_state
def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from ingest_api.auth import display_key

    infos = _state(settings).list_keys()
    print(f"{'KEY':<22} {'WORKSPACE':<24} {'CREATED (UTC)':<20} STATUS")
    for info in infos:
        created = datetime.fromtimestamp(info.created_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        status = "revoked" if info.revoked else "active"
        print(f"{display_key(info.key_id):<22} {info.workspace:<24} {created:<20} {status}")
    return 0


@_on_state
def cmd_keys_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from ingest_api.auth import display_key, key_id_of

    key_id = key_id_of(args.key)
    if not _state(settings).revoke_key(key_id):
        print(f"flokit: no key with id {key_id}", file=sys.stderr)
        return 1
    print(f"revoked {display_key(key_id)}")
    return 0


@_on_state
def cmd_workspace(args: argparse.Namespace, settings: Settings) -> int:
    state = _state(settings)
    if args.name and (args.rate_limit is not None or args.events):
        if args.rate_limit is not None and args.rate_limit < 1:
            print("flokit: --rate-limit must be at least 1", file=sys.stderr)
            return 2
        state.configure_workspace(
            args.name,
            rate_limit_per_minute=args.rate_limit,
            strict_events=None if args.events is None else args.events == "strict",
        )
    for w in state.list_workspaces():
        if args.name in (None, w.name):
            limit = w.rate_limit_per_minute or f"{settings.rate_limit_per_minute} (default)"
            print(f"{w.name}: rate limit {limit}/min, events {'strict' if w.strict_events else 'custom'}")
    return 0


def cmd_kafka_init(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.kafka_bootstrap:
        print("flokit: set FLOKIT_KAFKA_BOOTSTRAP to the Kafka brokers", file=sys.stderr)
        return 2
    from .queue.kafka_queue import create_topics

    partitions = args.partitions or settings.partitions
    created = create_topics(
        settings.kafka_bootstrap,
        {settings.topic: partitions, settings.dlq_topic: partitions},
        settings.replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    for name in (settings.topic, settings.dlq_topic):
        print(f"{name}: {'created' if name in created else 'exists'}")
    return 0


def cmd_queue_forget_group(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.embedded_queue:
        print(
            "flokit: FLOKIT_KAFKA_BOOTSTRAP is set; on Kafka an unused consumer group's offsets expire by "
            "themselves (offsets.retention.minutes)",
            file=sys.stderr,
        )
        return 2
    from schemas.queue import GroupBusy

    from .queue.local_log import forget_group

    path = settings.data_dir / "queue.sqlite3"
    try:
        known = forget_group(path, args.group)
    except GroupBusy:
        print(
            f"flokit: consumer group {args.group!r} is consuming {path} right now; stop it first",
            file=sys.stderr,
        )
        return 1
    if not known:
        print(f"flokit: {path} has no consumer group {args.group!r}", file=sys.stderr)
        return 1
    print(f"forgot consumer group {args.group}")
    return 0


def cmd_consumer(args: argparse.Namespace, settings: Settings) -> int:
    from .consumer_main import main as run_consumer

    return run_consumer(settings)


def cmd_warehouse(args: argparse.Namespace, settings: Settings) -> int:
    from .warehouse_server import serve

    serve(settings)
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from .clickhouse import migrate_main

    return migrate_main(settings, print_only=args.print_sql)


def cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    from .sql_cli import run

    return run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
