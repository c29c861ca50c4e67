"""kaudit sql: read-only SQL over the warehouse, for power users."""

from __future__ import annotations

import argparse
import sys

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "run read-only ClickHouse SQL on the warehouse (writes are refused)"
DESCRIPTION = """\
Run one SELECT statement (UNION, subqueries, CTEs, joins, window functions) on kaudit's tables.
ClickHouse's own parser checks it first: other tables (system.*, other databases), table functions (file, url,
s3, remote, numbers, view, merge, ...), dictionaries, functions outside kaudit's allow-list, SETTINGS, FORMAT and
INTO OUTFILE are refused (exit code 2, the message names what was refused). Every read runs under limits
(KAUDIT_QUERY_MAX_EXECUTION_TIME, _MEMORY_USAGE, _ROWS_TO_READ, _BYTES_TO_READ, _RESULT_ROWS, _RESULT_BYTES);
a read stopped at one exits with code 3 and names the limit.

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

    s = settings_from(args, clickhouse_dsn="clickhouse", api_url="api")
    try:
        result = execute(s, sql=args.sql)
    except ExecError as exc:
        print(f"kaudit sql: {exc}", file=sys.stderr)
        return 3 if exc.limit else 2
    print_result(result, args.format)
    return 0
