"""kaudit alert: alerts on saved searches (query alerts), evaluated on a schedule."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from pipeline.commands._common import add_clickhouse_flag, add_kafka_flag, settings_from
from pipeline.commands.search import _owner
from pipeline.query.output import printable

HELP = "alerts on saved searches: add, list, remove, evaluate"
DESCRIPTION = """\
A query alert is a saved search evaluated on a schedule. Every --every (ticks aligned to the clock) it runs over
the last --window of events with --when as its having condition; each group (the query's groupby values) for
which the condition holds --for evaluations in a row raises ONE alert on the alerts topics (k8s-audit-alerts,
-json; same Alert schema as the stream rules, rule_id = search:<name>), and one resolved alert when it stops
holding. Alert ids are deterministic per (search, group, window): a restart or a second evaluator never alerts
twice.

  kaudit alert add denied-users --every 1m --window 5m --when 'count > 20' 'responsestatus_code=403 groupby username'
  kaudit alert add deletes --every 1m --window 10m --when 'count >= 50' --for 3 --severity high 'verb=delete'
  kaudit alert add slow-lists --every 5m --window 15m --when 'percentile(latency, 99) > 2000000' 'verb=list groupby cluster'
  kaudit alert list
  kaudit alert rm denied-users
  kaudit alert run          # evaluate here (a server DSN, or an embedded path no sink holds)

--when is a having condition on the query's aggregates (count, count_distinct(f), avg(f), percentile(f, p), ...,
with and/or/not). A query without aggregates alerts on its count. Evaluation happens inside the process that owns
the warehouse: `kaudit sink` in embedded mode (KAUDIT_QUERY_ALERTS=0 turns it off), or `kaudit alert run`
with a server DSN. Evaluations and their cost: kaudit_query_alert_* on /metrics.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ad = sub.add_parser("add", help="add (or replace) a query alert")
    ad.add_argument("name")
    ad.add_argument("query", help="the query (quote it for the shell)")
    ad.add_argument("--every", required=True, help="how often it is evaluated, e.g. 1m (at least 10s)")
    ad.add_argument("--window", help="events of this last period per evaluation (default: --every)")
    ad.add_argument("--when", required=True, help="the condition, e.g. 'count > 20'")
    ad.add_argument("--for", dest="for_", type=int, default=1, metavar="N",
                    help="evaluations in a row the condition must hold before it fires (default 1)")  # fmt: skip
    ad.add_argument("--severity", default="medium", help="info, low, medium (default), high, critical")
    ad.add_argument("--owner", help="owner (default: your login name)")
    ad.add_argument("--cluster", action="append", default=[], help="only these clusters (repeat the flag)")
    ls = sub.add_parser("list", help="list query alerts")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    rm = sub.add_parser("rm", help="remove a query alert (and its saved search)")
    rm.add_argument("name")
    rn = sub.add_parser("run", help="evaluate the query alerts in this process until stopped")
    rn.add_argument("--once", action="store_true",
                    help="evaluate every alert's current tick now (alerts it produces are printed), then exit")  # fmt: skip
    add_kafka_flag(rn)
    for sp in sub.choices.values():
        sp.add_argument("--api", metavar="URL", help="query API of the warehouse owner (KAUDIT_API_URL)")
        add_clickhouse_flag(sp)


def run(args: argparse.Namespace) -> int:
    from pipeline.query.execute import ExecError
    from pipeline.query.output import print_result
    from pipeline.searches.client import open_store
    from pipeline.searches.store import SavedSearch, SearchError, parse_duration

    s = settings_from(args, clickhouse_dsn="clickhouse", api_url="api", kafka_bootstrap="kafka")
    if args.action == "run":
        return _run_evaluator(s, args.once)
    try:
        with open_store(s) as (store, _wh):
            if args.action == "add":
                ss = SavedSearch(args.name, args.query, _owner(args), args.cluster, "1h",
                                 parse_duration(args.every, "every"), parse_duration(args.window, "window"),
                                 args.when, args.for_, args.severity)  # fmt: skip
                ss = store.save(ss)
                print(f"saved alert {ss.name}: every {ss.alert_every}s over {ss.alert_window}s when {ss.alert_when}"
                      + (f" for {ss.alert_for} evaluations" if ss.alert_for > 1 else ""))  # fmt: skip
            elif args.action == "list":
                found = store.list(alerts_only=True)
                if args.format == "json":
                    for ss in found:
                        print(json.dumps(ss.as_json()))
                else:
                    rows = [[ss.name, ss.alert_every, ss.alert_window, ss.alert_when, ss.alert_for, ss.severity,
                             ",".join(ss.clusters), ss.query] for ss in found]  # fmt: skip
                    print_result({"columns": ["name", "every_s", "window_s", "when", "for", "severity", "clusters",
                                              "query"], "rows": rows}, max_width=80)  # fmt: skip
            elif args.action == "rm":
                ss = store.get(args.name)
                if ss is None or not ss.is_alert:
                    print(f"kaudit alert: no query alert {args.name!r}", file=sys.stderr)
                    return 1
                store.delete(args.name)
                print(f"removed {args.name}")
    except SearchError as exc:
        print(f"kaudit alert: {exc}", file=sys.stderr)
        return 2
    except ExecError as exc:
        print(f"kaudit alert: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_evaluator(s, once: bool) -> int:  # noqa: ANN001
    import time

    from pipeline.searches.alerts import Evaluator
    from pipeline.warehouse.client import WarehouseLockedError, open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.warehouse.reader import Warehouse

    try:
        migrate(open_client(s), s)
    except WarehouseLockedError:
        print("kaudit alert: the embedded warehouse is held by a sink, which evaluates the query alerts itself "
              "(KAUDIT_QUERY_ALERTS); `kaudit alert run` is for a server DSN", file=sys.stderr)  # fmt: skip
        return 2
    wh = Warehouse(s, max_workers=1)
    stop = threading.Event()
    ev = Evaluator(s, wh, stop=stop)
    try:
        if once:
            ev.tick(time.time(), skip_current=False)
            for rec in ev.produced:
                print(printable(f"{rec['rule_id']} {rec['tags'][1]}: {rec['group_key'] or '-'} (count {rec['count']})"))
            return 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_a: stop.set())
        ev.start()
        while not stop.wait(1):
            pass
        return 0
    finally:
        ev.stop()
        wh.close()
