"""kaudit sql: read-only SQL over the warehouse, for power users."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "run read-only ClickHouse SQL on the warehouse (writes are refused)"
DESCRIPTION = """\
Run one read-only SQL statement (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS) on the warehouse.
Writes, DDL, SET, INTO OUTFILE and table functions that reach outside (file, url, s3, remote, ...) are refused,
and the statement runs with readonly=2 as well.

Tables: audit_events (one row per stored event; columns = query-language fields; latency_us),
  verb_stats / status_stats (per-window counts: a window's total is sum(count) over its rows),
  alerts (ReplacingMergeTree by alert_id: use FINAL or argMax for exact counts), events_1m (per-minute rollup:
  sum(events)).

  kaudit sql 'SELECT verb, count() FROM audit_events GROUP BY verb ORDER BY 2 DESC'
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sql", help="the statement (quote it for the shell)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format")
    p.add_argument("--api", metavar="URL", help="query API of the warehouse owner (KAUDIT_API_URL)")
    add_clickhouse_flag(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.query.execute import ExecError
    from pipeline.query.execute import run as execute
    from pipeline.query.output import print_result
    from pipeline.warehouse.reader import ReadOnlyError, check_read_only

    s = settings_from(args, clickhouse_dsn="clickhouse", api_url="api")
    try:
        check_read_only(args.sql)
        result = execute(s, sql=args.sql)
    except ReadOnlyError as exc:
        print(f"kaudit sql: refused: {exc}", file=sys.stderr)
        return 2
    except ExecError as exc:
        print(f"kaudit sql: {exc}", file=sys.stderr)
        return 2
    print_result(result, args.format)
    return 0
