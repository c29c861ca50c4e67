"""kaudit query: the query language over the stored audit events."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "search and aggregate stored audit events with the query language"
DESCRIPTION = """\
Search and aggregate the stored audit events (table audit_events) with the kaudit query language.

  kaudit query --since 1h 'verb="delete" groupby objectref_resource,username'
  kaudit query 'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" groupby username'
  kaudit query --since 1d 'verb=create and objectref_resource=pods timeslice 1h before 7d'
  kaudit query 'username startswith "system:serviceaccount:" and not usergroups="system:masters" limit 20'

Conditions: field = value, != , < , <= , > , >= , contains, startswith, endswith, in (a, b),
  field exists, exists field, field is empty, field is not empty, not, and, or, ( ).
  * in a value is a wildcard (verb=*et*). = is exact; contains/startswith/endswith ignore case.
  Lists (usergroups, sourceips): = means "has"; maps: annotations.<key> (annotations.authorization.k8s.io/decision).
  logtype="Kubernetes Audit Logs" is accepted and optional.
Clauses: groupby f1,f2[,count_distinct(f),sum(f),min(f),max(f),avg(f)]  (count is always there)
  timeslice 5m | include f1,f2 | exclude f3 | before 1d (needs --since/--from) | sort by f [asc|desc] | limit n
Fields are the normalized names (username, verb, objectref_resource, objectref_namespace, responsestatus_code,
  sourceips, useragent, stage, cluster, ...) with aliases (user, resource, namespace, code, ...);
  latency = apiserver.latency.k8s.io/total annotation, else stage_ts - request_received_ts (µs).
Counts are rows, i.e. deduplicated audit events: a request logged at two stages (RequestReceived and
  ResponseComplete) counts twice unless you filter with stage=ResponseComplete.
Without groupby/timeslice the matching events are listed, newest first (100 unless limit says otherwise).
In embedded mode a running `kaudit sink` owns the warehouse: the query goes through its API (KAUDIT_API_URL).
Every query runs under the read limits (KAUDIT_QUERY_MAX_EXECUTION_TIME, _MEMORY_USAGE, _ROWS_TO_READ,
_BYTES_TO_READ, _RESULT_ROWS, _RESULT_BYTES); one stopped at a limit exits with code 3 and names it.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", help="the query (quote it for the shell)")
    p.add_argument("--since", help="only events received in this last period, e.g. 15m, 1h, 7d")
    p.add_argument("--from", dest="from_", metavar="T", help="start time (ISO 8601, epoch seconds, now-2h)")
    p.add_argument("--to", metavar="T", help="end time (exclusive)")
    p.add_argument("--cluster", help="only this cluster")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="table (default), json (one object per row) or csv")  # fmt: skip
    p.add_argument("--explain", action="store_true", help="print the SQL and its parameters, do not run it")
    p.add_argument("--api", metavar="URL", help="query API of the warehouse owner (KAUDIT_API_URL)")
    add_clickhouse_flag(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.query import QueryError, compile_query
    from pipeline.query.execute import ExecError
    from pipeline.query.execute import run as execute
    from pipeline.query.output import print_result

    s = settings_from(args, clickhouse_dsn="clickhouse", api_url="api")
    qargs = {"since": args.since, "from": args.from_, "to": args.to, "cluster": args.cluster}
    try:
        if args.explain:
            cq = compile_query(args.query, since=args.since, from_=args.from_, to=args.to, cluster=args.cluster)
            print(cq.sql)
            print(json.dumps(cq.params, indent=2, ensure_ascii=False))
            return 0
        result = execute(s, query=args.query, qargs=qargs)
    except (QueryError, ExecError) as exc:
        col = getattr(exc, "column", None)
        print(f"kaudit query: {exc}", file=sys.stderr)
        if col:
            print(f"  {args.query}\n  {' ' * (col - 1)}^", file=sys.stderr)
        return 3 if getattr(exc, "limit", None) else 2
    print_result(result, args.format)
    return 0
