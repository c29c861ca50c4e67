"""kaudit migrate: apply the ClickHouse schema migrations; optionally create the read-only reader user."""

from __future__ import annotations

import argparse
import hashlib
import sys

from pipeline.commands._common import add_clickhouse_flag, settings_from
from pipeline.config import Settings

HELP = "apply ClickHouse schema migrations (writers also do this on start); --reader-user creates the reader"
DESCRIPTION = """\
Apply the ClickHouse schema migrations (writers also do this on start).

--reader-user NAME (ClickHouse server only) also creates, as the DSN's admin user, the dedicated read-only user
that `kaudit serve` / `kaudit sql` / `kaudit query` read with (set KAUDIT_READER_USER / KAUDIT_READER_PASSWORD):
  a settings profile NAME_profile: readonly=1, allow_ddl=0, allow_introspection_functions=0 (CONST), the read
    limits of KAUDIT_QUERY_MAX_* as values and as MAX constraints (lowerable per query, never raisable);
  a role NAME_role with SELECT on kaudit's tables of the DSN's database only (no table functions, no
    dictionaries, no system tables: those need grants the role does not have);
  the user NAME (password: KAUDIT_READER_PASSWORD, stored as its sha256) with that role and profile.
--print shows the statements instead of running them (the migrations of an empty database, or with
  --reader-user the reader's), each first parsed by ClickHouse's parser (embedded chDB; no server needed).
  When running, the server parses the reader's statements (and on a cluster the migrations') before any runs.

--clickhouse-cluster NAME (KAUDIT_CLICKHOUSE_CLUSTER; ClickHouse server only) lays the tables out on that cluster
of the server's remote_servers: <table>_local ReplicatedMergeTree tables per shard (Keeper path
/clickhouse/tables/{shard}/{database}/{table}, replica {replica}: macros every node must define) and Distributed
tables under kaudit's table names, every DDL ON CLUSTER; the reader user too. Set it for every kaudit process
(writers then insert with distributed_foreground_insert=1, insert_quorum='auto'). A database keeps the layout it
was created with: there is no conversion (migrate refuses the other one). See README "Server deployment".
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_clickhouse_flag(p)
    p.add_argument("--reader-user", metavar="NAME", help="also create/replace this read-only reader (server only)")
    p.add_argument("--print", action="store_true",
                   help="print the statements (the migrations, or with --reader-user the reader's), run nothing")  # fmt: skip
    p.add_argument("--clickhouse-cluster", metavar="NAME",
                   help="lay the tables out on this server cluster (KAUDIT_CLICKHOUSE_CLUSTER; empty = one node)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from pipeline.warehouse.client import is_embedded, open_client
    from pipeline.warehouse.migrations import Layout, migrate, migration_statements

    s = settings_from(args, clickhouse_dsn="clickhouse", clickhouse_cluster="clickhouse_cluster")
    try:
        Layout(s.clickhouse_cluster.strip())
    except ValueError as exc:
        print(f"kaudit migrate: {exc}", file=sys.stderr)
        return 2
    database = _dsn_database(s.effective_clickhouse_dsn)
    if args.print and not args.reader_user:
        return _print(migration_statements(s, database))
    if args.reader_user and is_embedded(s.effective_clickhouse_dsn):
        print("kaudit migrate: --reader-user needs a ClickHouse server DSN (embedded chDB has no users; there the "
              "query guard and per-query readonly confine reads)", file=sys.stderr)  # fmt: skip
        return 2
    if s.clickhouse_cluster.strip() and is_embedded(s.effective_clickhouse_dsn):
        print("kaudit migrate: KAUDIT_CLICKHOUSE_CLUSTER needs a ClickHouse server DSN (embedded chDB is one "
              "process; --print shows the statements)", file=sys.stderr)  # fmt: skip
        return 2
    if args.reader_user and args.print:
        stmts = _reader_statements(s, args.reader_user, database)
        if stmts is None:
            return 2
        return _print(stmts)
    client = open_client(s)
    applied = migrate(client, s)
    print("\n".join(f"applied {a}" for a in applied) or "schema up to date")
    if args.reader_user:
        database = client.query("SELECT currentDatabase()").result_rows[0][0]
        stmts = _reader_statements(s, args.reader_user, database)
        if stmts is None:
            return 2
        for stmt in stmts:  # the server's own parser first: nothing half-applied because of a typo
            client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": stmt})
        for stmt in stmts:
            client.command(stmt)
        print(f"reader user {args.reader_user} ready: set KAUDIT_READER_USER={args.reader_user} and "
              "KAUDIT_READER_PASSWORD for kaudit serve / sql / query")  # fmt: skip
    return 0


def _dsn_database(dsn: str) -> str:
    from urllib.parse import urlparse

    if dsn.startswith("chdb:"):
        return "default"
    return urlparse(dsn).path.strip("/") or "default"


def _print(stmts: list[str]) -> int:
    """Print statements after ClickHouse's parser (in-memory chDB) read each: 1 if one does not parse."""
    from pipeline.warehouse.migrations import syntax_error

    bad = 0
    for stmt in stmts:
        if stmt.startswith("--"):
            print(stmt)
            continue
        print(stmt + ";")
        err = syntax_error(stmt)
        if err:
            print(f"kaudit migrate: ClickHouse's parser refuses the statement above: {err}", file=sys.stderr)
            bad = 1
    return bad


def _reader_statements(s: Settings, user: str, database: str) -> list[str] | None:
    from pipeline.warehouse.sqlguard import limits_from, reader_user_sql

    if not s.reader_password:
        print("kaudit migrate: set KAUDIT_READER_PASSWORD to the reader's password", file=sys.stderr)
        return None
    digest = hashlib.sha256(s.reader_password.encode()).hexdigest()
    try:
        return reader_user_sql(user, digest, database, limits_from(s), cluster=s.clickhouse_cluster.strip())
    except ValueError as exc:
        print(f"kaudit migrate: {exc}", file=sys.stderr)
        return None
