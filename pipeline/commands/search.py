"""kaudit search: saved searches (a named query with its owner and clusters), stored in ClickHouse."""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "save, list, run and remove saved searches (named queries)"
DESCRIPTION = """\
Saved searches are named queries (with an owner and optional clusters) stored in the warehouse (table
saved_searches), shared by the CLI, the API (/api/searches) and the dashboard ("save" next to a widget's query).

  kaudit search save denied-lists 'responsestatus_code=403 and verb="list" groupby username' --since 7d
  kaudit search save prod-deletes 'verb=delete groupby objectref_resource' --cluster prod-eu --cluster prod-us
  kaudit search list
  kaudit search run denied-lists [--since 1d | --from T --to T] [--format json]
  kaudit search show denied-lists
  kaudit search rm denied-lists

A saved search with --every/--window/--when is a query alert: see `kaudit alert --help`.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sv = sub.add_parser("save", help="save (or replace) a search")
    sv.add_argument("name")
    sv.add_argument("query", help="the query (quote it for the shell)")
    add_common(sv)
    ls = sub.add_parser("list", help="list saved searches")
    ls.add_argument("--owner", help="only this owner's")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    for name, text in (("show", "print one saved search"), ("rm", "remove a saved search")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("name")
    rn = sub.add_parser("run", help="run a saved search")
    rn.add_argument("name")
    rn.add_argument("--since", help="this last period instead of the search's own (e.g. 1h, 7d)")
    rn.add_argument("--from", dest="from_", metavar="T", help="start time (ISO 8601, epoch seconds, now-2h)")
    rn.add_argument("--to", metavar="T", help="end time (exclusive)")
    rn.add_argument("--format", choices=("table", "json", "csv"), default="table")
    for sp in sub.choices.values():
        sp.add_argument("--api", metavar="URL", help="query API of the warehouse owner (KAUDIT_API_URL)")
        add_clickhouse_flag(sp)


def add_common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--owner", default=None, help="owner (default: your login name)")
    sp.add_argument("--cluster", action="append", default=[], help="only these clusters (repeat the flag)")
    sp.add_argument("--since", default="1h", help="the range it runs over by default (default 1h)")


def _owner(args: argparse.Namespace) -> str:
    if args.owner:
        return args.owner
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return ""


def run(args: argparse.Namespace) -> int:
    from pipeline.query.execute import ExecError
    from pipeline.query.output import print_result
    from pipeline.searches.client import open_store
    from pipeline.searches.store import SavedSearch, SearchError

    s = settings_from(args, clickhouse_dsn="clickhouse", api_url="api")
    try:
        with open_store(s) as (store, wh):
            if args.action == "save":
                ss = store.save(SavedSearch(args.name, args.query, _owner(args), args.cluster, args.since))
                print(f"saved {ss.name}")
            elif args.action == "list":
                found = store.list(args.owner)
                if args.format == "json":
                    for ss in found:
                        print(json.dumps(ss.as_json()))
                else:
                    rows = [[ss.name, ss.owner, ",".join(ss.clusters), ss.since,
                             f"every {ss.alert_every}s when {ss.alert_when}" if ss.is_alert else "", ss.query]
                            for ss in found]  # fmt: skip
                    print_result({"columns": ["name", "owner", "clusters", "since", "alert", "query"], "rows": rows,
                                  "elapsed_ms": 0}, max_width=80)  # fmt: skip
            elif args.action == "show":
                ss = store.get(args.name)
                if ss is None:
                    print(f"kaudit search: no saved search {args.name!r}", file=sys.stderr)
                    return 1
                print(json.dumps(ss.as_json(), indent=2))
            elif args.action == "rm":
                if not store.delete(args.name):
                    print(f"kaudit search: no saved search {args.name!r}", file=sys.stderr)
                    return 1
                print(f"removed {args.name}")
            elif args.action == "run":
                qargs = {"since": args.since, "from": args.from_, "to": args.to}
                result = run_saved(store, wh, args.name, qargs)
                if result is None:
                    print(f"kaudit search: no saved search {args.name!r}", file=sys.stderr)
                    return 1
                print_result(result, args.format)
    except SearchError as exc:
        print(f"kaudit search: {exc}", file=sys.stderr)
        if exc.column and getattr(args, "query", None) and exc.field == "query":
            print(f"  {args.query}\n  {' ' * (exc.column - 1)}^", file=sys.stderr)
        return 2
    except ExecError as exc:
        print(f"kaudit search: {exc}", file=sys.stderr)
        return 2
    return 0


def run_saved(store, wh, name: str, qargs: dict[str, str | None]):  # noqa: ANN001, ANN201
    """Run a saved search locally (wh) or through the API (store is an HttpStore)."""
    from pipeline.query import QueryError, compile_query
    from pipeline.searches.store import SearchError

    if wh is None:
        return store.run(name, qargs)
    ss = store.get(name)
    if ss is None:
        return None
    since = qargs.get("since") or (None if qargs.get("from") or qargs.get("to") else ss.since or None)
    try:
        cq = compile_query(ss.query, since=since, from_=qargs.get("from"), to=qargs.get("to"),
                           cluster=ss.clusters or None, settings=wh.s)  # fmt: skip
    except QueryError as exc:
        raise SearchError(str(exc), exc.column) from None
    out = wh.timed(cq.sql, cq.params, cq)
    out["columns"] = cq.columns
    return out
