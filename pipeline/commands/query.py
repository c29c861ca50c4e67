"""kaudit query: the query language over the stored audit events."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "search and aggregate stored audit events with the query language"
DESCRIPTION = """\
Search and aggregate the stored audit events (table audit_events) with the kaudit query language (the
operators of Site24x7 AppLogs, plus percentile, having, sort by an aggregate and top).

  kaudit query --since 1h 'verb="delete" groupby objectref_resource,username'
  kaudit query --since 7d 'responsestatus_code=403 and verb="list" groupby username'

Conditions (combine with and, or, not, parentheses; and binds tighter than or)
  =  !=  <  <=  >  >=     verb="delete"   responsestatus_code>=400   verb=*et* (* is a wildcard; = is exact)
  contains / startswith / endswith (ignore case)    username startswith "system:serviceaccount:"
  in (a, b)               verb in (create, update, patch, delete)    verb not in (get, list, watch)
  is empty / is not empty objectref_namespace is empty    sourceips is not empty
  exists                  objectref_subresource exists    exists impersonated_username
  lists and maps          usergroups="system:masters" (has)    annotations.authorization.k8s.io/decision=forbid
  logtype                 logtype="Kubernetes Audit Logs" (accepted; every stored event is one)
Sources (the clusters file, KAUDIT_CLUSTERS_FILE: cluster -> group, labels)
  monitor_name            monitor_name="prod-eu" (= cluster)
  monitor_group           monitor_group="production"    groupby monitor_group
  tags                    tags="env=prod"  tags="team:payments"  tags="prod" (a label key or value)
Aggregates (with or without groupby; without it, one row)
  count                   verb=delete count
  count_distinct(f)       responsestatus_code=403 count_distinct(username)
  sum(f) min(f) max(f) avg(f)    groupby verb, avg(latency), max(latency)
  sd(f)                   groupby objectref_resource, sd(latency)    (sample standard deviation)
  percentile(f, p)        groupby verb, percentile(latency, 99)    (p in 0..100, linear interpolation)
  distinct(f)             responsestatus_code=403 distinct(username)    (alone: one row per value)
  ratio(a, b)             ratio(responsestatus_code=403, responsestatus_code>0)    (count of a / count of b)
Clauses
  groupby f1, f2[, aggregates]    count is always there with groupby
  timeslice 5m            verb=create timeslice 1h groupby objectref_resource    timeslice 10m avg(latency)
  before 1d               count before 1d    groupby verb before 7d    timeslice 1h before 1d
                          (needs --since/--from; adds <column>_before: the same query one period earlier,
                          drawn at the current period's times; overlapping periods count in both)
  having <aggregate> <op> <number>    groupby username having count > 20 and count_distinct(verb) >= 3
  sort by f|aggregate [asc|desc]      groupby username sort by count_distinct(verb) desc
  top n [by aggregate]    groupby username top 10    timeslice 1h groupby username top 5 (5 series)
  include f1,f2 / exclude f3    verb=delete include username, objectref_name    exclude count
  limit n                 events: 100 newest by default; groups: 1000
Fields are the normalized names (username, verb, objectref_resource, objectref_namespace, responsestatus_code,
  sourceips, useragent, stage, cluster, ...) with aliases (user, resource, namespace, code, ...);
  latency = the apiserver.latency.k8s.io/total annotation, else stage_ts - request_received_ts (µs).
Counts are rows, i.e. deduplicated audit events: a request logged at two stages (RequestReceived and
  ResponseComplete) counts twice unless you filter with stage=ResponseComplete.
Without an aggregate the matching events are listed, newest first. Errors point at the column.
In embedded mode a running `kaudit sink` owns the warehouse: the query goes through its API (KAUDIT_API_URL).
Every query runs under the read limits (KAUDIT_QUERY_MAX_EXECUTION_TIME, _MEMORY_USAGE, _ROWS_TO_READ,
_BYTES_TO_READ, _RESULT_ROWS, _RESULT_BYTES); one stopped at a limit exits with code 3 and names it.
Saved searches and alerts on them: `kaudit search --help`, `kaudit alert --help`.
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
