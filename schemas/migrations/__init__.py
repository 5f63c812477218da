"""Versioned warehouse migrations: `schemas/migrations/NNNN_name.sql`, applied in order, each exactly once.

    applied = apply_migrations(client, database, cluster)   # names applied now, [] when up to date

A migration file starts with a comment header saying what it does (its first line reads
`-- NNNN_name: summary`); its statements are separated by lines holding only `;`. What was applied is
recorded in `<database>.schema_migrations` (name, applied_at, checksum). A file is never re-applied, and
an applied file whose checksum changed is refused (MigrationError): a change to the schema is a NEW
migration. Statements should be idempotent (IF NOT EXISTS) so that a file interrupted halfway can simply
be run again; migrations are not transactional.

`client` is any clickhouse-connect client (deploy/clickhouse.py makes them; `flokit migrate` runs this). One
set of files serves two topologies, chosen by the cluster name (FLOKIT_CLICKHOUSE_CLUSTER):

- single node (cluster unset): plain MergeTree-family tables; what a consumer inserts into is the table;
- cluster (`FLOKIT_CLICKHOUSE_CLUSTER=name`): every statement runs `ON CLUSTER name`, a sharded table T
  is `T_local` (Replicated* engine, path '/clickhouse/tables/{shard}/{database}/{table}', replica
  '{replica}') on every node plus `T`, a Distributed table over them; readers and writers use `T`.
  (The cluster rendering is tested by rendering only; it has not been run against a live cluster.)

Placeholders in the files:

    {{db}}                          the database, as a quoted identifier
    {{on_cluster}}                  `ON CLUSTER <name>`, or nothing on a single node
    {{local:T}}                     db.T on a single node, db.T_local on a cluster (where the data lives)
    {{engine:E}} / {{engine:E(a)}}  E(a) on a single node, ReplicatedE('<path>', '{replica}', a) on a cluster
    {{distributed:T, key}}          Distributed(cluster, db, T_local, key); only in cluster-only statements

A statement whose first line is `-- cluster only` is left out on a single node. Whole-line `--`
comments are dropped when rendering.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from itertools import pairwise
from typing import TYPE_CHECKING

from schemas.warehouse import MIGRATIONS_TABLE, quote_identifier

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

__all__ = [
    "MIGRATIONS_TABLE",
    "Migration",
    "MigrationError",
    "Topology",
    "apply_migrations",
    "applied_migrations",
    "load_migrations",
    "render",
    "render_all",
]

CLUSTER_ONLY = "-- cluster only"
REPLICATED_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
REPLICA_NAME = "{replica}"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*(?::\s*(.*?)\s*)?\}\}", re.S)
_SEPARATOR = re.compile(r"^[ \t]*;[ \t]*$", re.M)


class MigrationError(RuntimeError):
    """A migration cannot be applied: a changed file, a bad template, or a failed statement."""


@dataclass(frozen=True)
class Migration:
    name: str  # file name without .sql, e.g. "0001_events"
    number: int
    description: str  # the summary on the header's first line
    text: str  # the template, as shipped
    checksum: str  # sha256 of the file's text (UTF-8, LF line endings)

    @classmethod
    def from_text(cls, file_name: str, text: str) -> Migration:
        match = _FILE_NAME.match(file_name)
        if not match:
            raise MigrationError(f"{file_name}: migration files are named NNNN_snake_case_name.sql")
        name = file_name[:-4]
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        prefix = f"-- {name}:"
        if not first.startswith(prefix) or not first[len(prefix) :].strip():
            raise MigrationError(f"{file_name}: the first line must say what it does: `{prefix} <summary>`")
        # Line endings are normalised first, so a checkout with CRLF line endings has the same checksum.
        checksum = hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()
        return cls(name, int(match.group(1)), first[len(prefix) :].strip(), text, checksum)


@dataclass(frozen=True)
class Topology:
    """What the templates render for: a database, on a single node or on a named cluster."""

    database: str
    cluster: str = ""  # none: a single node

    def __post_init__(self) -> None:
        if not self.database:
            raise MigrationError("an empty database name")

    @property
    def db(self) -> str:
        return quote_identifier(self.database)

    @property
    def on_cluster(self) -> str:
        return f"ON CLUSTER {quote_identifier(self.cluster)}" if self.cluster else ""

    def local(self, table: str) -> str:
        return f"{self.db}.{quote_identifier(table + '_local' if self.cluster else table)}"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- loading and rendering ---------------------------------------------------------------------------------


def load_migrations() -> list[Migration]:
    """Every migration file shipped in this package, in order."""
    found = []
    for entry in resources.files(__package__).iterdir():
        if entry.name.endswith(".sql"):
            found.append(Migration.from_text(entry.name, entry.read_bytes().decode("utf-8")))
    found.sort(key=lambda m: m.number)
    for before, after in pairwise(found):
        if before.number == after.number:
            raise MigrationError(f"two migrations numbered {after.number:04d}: {before.name}, {after.name}")
    return found


def render(migration: Migration, topology: Topology) -> list[str]:
    """The statements of `migration` for `topology`, placeholders filled in, comments dropped."""
    statements = []
    for chunk in _SEPARATOR.split(migration.text):
        lines = chunk.strip().splitlines()
        cluster_only = bool(lines) and lines[0].strip() == CLUSTER_ONLY
        if cluster_only and not topology.cluster:
            continue
        body = "\n".join(line.rstrip() for line in lines if not line.lstrip().startswith("--")).strip()
        if not body:
            continue
        try:
            statements.append(_PLACEHOLDER.sub(lambda m: _fill(m.group(1), m.group(2), topology), body))
        except MigrationError as exc:
            raise MigrationError(f"{migration.name}: {exc}") from None
    return statements


def render_all(topology: Topology) -> list[tuple[str, list[str]]]:
    """(name, statements) for every migration, for inspection: `flokit migrate --print` shows this."""
    return [(m.name, render(m, topology)) for m in load_migrations()]


def _fill(kind: str, arg: str | None, topology: Topology) -> str:
    if kind == "db" and arg is None:
        return topology.db
    if kind == "on_cluster" and arg is None:
        return topology.on_cluster
    if kind == "local" and arg:
        return topology.local(arg)
    if kind == "engine" and arg:
        match = re.fullmatch(r"([A-Za-z]*MergeTree)\s*(?:\((.*)\))?", arg, re.S)
        if not match:
            raise MigrationError(
                f"{{{{engine:{arg}}}}}: expected a MergeTree-family engine, e.g. ReplacingMergeTree"
            )
        engine, args = match.group(1), (match.group(2) or "").strip()
        if not topology.cluster:
            return f"{engine}({args})" if args else engine
        replicated = [quote_string(REPLICATED_PATH), quote_string(REPLICA_NAME)] + ([args] if args else [])
        return f"Replicated{engine}({', '.join(replicated)})"
    if kind == "distributed" and arg:
        table, _, key = arg.partition(",")
        if not topology.cluster:
            raise MigrationError("{{distributed:...}} is only allowed in `-- cluster only` statements")
        if not key.strip():
            raise MigrationError(
                f"{{{{distributed:{arg}}}}}: needs a sharding key: {{{{distributed:T, key}}}}"
            )
        return (
            f"Distributed({quote_string(topology.cluster)}, {quote_string(topology.database)}, "
            f"{quote_string(table.strip() + '_local')}, {key.strip()})"
        )
    raise MigrationError(f"unknown placeholder {{{{{kind}{':' + arg if arg else ''}}}}}")


def bootstrap_statements(topology: Topology) -> list[str]:
    """The database and the schema_migrations table, created before any migration runs.

    On a cluster schema_migrations is replicated to every node of every shard (one ZooKeeper path for
    the whole cluster; the replica name combines the {shard} and {replica} macros so it is unique).
    """
    if topology.cluster:
        engine = (
            f"ReplicatedMergeTree({quote_string('/clickhouse/tables/all/{database}/{table}')}, "
            f"{quote_string('{shard}-{replica}')})"
        )
    else:
        engine = "MergeTree"
    return [
        f"CREATE DATABASE IF NOT EXISTS {topology.db} {topology.on_cluster}".rstrip(),
        f"CREATE TABLE IF NOT EXISTS {topology.db}.{MIGRATIONS_TABLE} {topology.on_cluster}\n"
        f"(\n    name String,\n    applied_at DateTime64(3, 'UTC'),\n    checksum String\n)\n"
        f"ENGINE = {engine}\nORDER BY name",
    ]


# -- applying ----------------------------------------------------------------------------------------------


def applied_migrations(client: Client, topology: Topology) -> dict[str, str]:
    """name -> checksum of what schema_migrations records (the database and table must exist)."""
    rows = client.query(
        f"SELECT name, any(checksum) FROM {topology.db}.{MIGRATIONS_TABLE} GROUP BY name"
    ).result_rows
    return {name: checksum for name, checksum in rows}


def apply_migrations(
    client: Client, database: str, cluster: str = "", migrations: Iterable[Migration] | None = None
) -> list[str]:
    """Apply every migration not yet recorded in `database`.schema_migrations, in order, for a single node
    (`cluster` "") or a cluster; returns their names.

    Creates the database and schema_migrations first if missing. Refuses to do anything when an applied
    migration's file changed since (checksum mismatch). `client` is a clickhouse-connect client; its own
    default database does not matter (every name is qualified). A statement ClickHouse refuses is a
    MigrationError naming it, whose __cause__ is the client's error.
    """
    topology = Topology(database, cluster)
    migrations = load_migrations() if migrations is None else sorted(migrations, key=lambda m: m.number)
    rendered = [(m, render(m, topology)) for m in migrations]  # template errors surface before any change
    # use_database=False: the client may default to the very database this creates.
    for statement in bootstrap_statements(topology):
        client.command(statement, use_database=False)
    applied = applied_migrations(client, topology)
    changed = [m.name for m in migrations if m.name in applied and applied[m.name] != m.checksum]
    if changed:
        raise MigrationError(
            f"applied migration(s) {', '.join(changed)} changed since they were applied "
            f"(checksum differs from {topology.database}.{MIGRATIONS_TABLE}); "
            "never edit an applied migration, add a new one instead"
        )
    done = []
    for migration, statements in rendered:
        if migration.name in applied:
            continue
        for number, statement in enumerate(statements, 1):
            try:
                client.command(statement, use_database=False)
            except Exception as exc:
                raise MigrationError(
                    f"{migration.name}: statement {number} of {len(statements)} failed"
                ) from exc
        client.insert(
            MIGRATIONS_TABLE,
            [[migration.name, datetime.now(UTC), migration.checksum]],
            column_names=["name", "applied_at", "checksum"],
            database=topology.database,
        )
        done.append(migration.name)
    return done
