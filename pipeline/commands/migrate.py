"""kaudit migrate: apply the ClickHouse schema migrations."""

from __future__ import annotations

import argparse

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "apply ClickHouse schema migrations (writers also do this on start)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_clickhouse_flag(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate

    s = settings_from(args, clickhouse_dsn="clickhouse")
    applied = migrate(open_client(s), s)
    print("\n".join(f"applied {a}" for a in applied) or "schema up to date")
    return 0
