"""kaudit volume: where the audit volume comes from (events, JSON bytes, ClickHouse cost), from the rollup."""

from __future__ import annotations

import argparse
import json
import sys

from pipeline.commands._common import add_clickhouse_flag, settings_from
from pipeline.query.output import terminal_text

HELP = "show where the audit volume comes from: events, bytes and ClickHouse cost by user, verb, resource, ..."
DESCRIPTION = """\
Stored audit events and their bytes (each event's compact JSON as the API server sent it) over a window, from
the hourly rollup volume_1h that the warehouse keeps at ingest (no scan of audit_events), with:

  - a headline and the categories volume typically comes from (probes, leases, Events, service accounts',
    nodes' and control plane reads, writes, ...), each with its share of events and bytes;
  - the top contributors grouped by --by, with their shares and their ClickHouse cost (the compressed bytes
    of audit_events apportioned: object columns by object bytes, the rest by events);
  - events per hour.

Dimensions for --by: cluster, user, useragent, verb, resource, apigroup, subresource, namespace, level, stage,
code, path (non-resource paths such as /livez; only for requests that succeeded).

  kaudit volume --since 7d
  kaudit volume --since 24h --cluster prod --by user,verb,resource
  kaudit volume --by useragent --top 10 --format json

`kaudit policy suggest` turns the same numbers into an audit policy that cuts them.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default="7d", help="window: 30m, 24h, 7d, 2w (default 7d; the rollup is hourly)")
    p.add_argument("--from", dest="from_", metavar="TIME", help="exact window from this time (ISO or epoch seconds; "
                   "reads audit_events instead of the hourly rollup)")
    p.add_argument("--to", metavar="TIME", help="end of the exact window (default now)")
    p.add_argument("--cluster", action="append", default=[], help="only this cluster (repeat or a,b)")
    p.add_argument("--by", default="user,verb,resource", help="group the top list by these (default user,verb,resource)")
    p.add_argument("--top", type=int, default=20, help="how many top contributors (default 20)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--api", metavar="URL", help="query API of the warehouse owner (KAUDIT_API_URL)")
    add_clickhouse_flag(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.query.execute import ExecError
    from pipeline.volume import VolumeError, parse_by, report, window_from_args
    from pipeline.volume.source import warehouse_runner
    from pipeline.volume.text import render

    s = settings_from(args, clickhouse_dsn="clickhouse", api_url="api")
    try:
        w = window_from_args(args.since, args.from_, args.to, args.cluster)
        by = parse_by(args.by)
        with warehouse_runner(s) as q:
            rep = report(q, w, by, max(1, args.top))
    except VolumeError as exc:
        print(f"kaudit volume: {exc}", file=sys.stderr)
        return 2
    except ExecError as exc:
        print(f"kaudit volume: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(rep.as_dict(), indent=2, default=str))
    else:
        print(terminal_text(render(rep)))  # user names and resources are anyone's text: no raw escapes
    return 0
