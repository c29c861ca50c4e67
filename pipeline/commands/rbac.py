"""kaudit rbac: explain a user's denied (403) requests and suggest the RBAC that would allow exactly them."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pipeline.commands._common import add_clickhouse_flag, settings_from
from pipeline.query.output import terminal_text

HELP = "explain a user's 403s and suggest the smallest Role/ClusterRole + bindings allowing exactly them"
DESCRIPTION = """\
RBAC troubleshooting from the audit trail.

  kaudit rbac explain --user bob --since 24h
      the denied (HTTP 403) requests of bob, grouped by verb, API group, resource, subresource and namespace,
      with counts, first/last seen and the authorizer's reason.
  kaudit rbac suggest --user system:serviceaccount:ns1:sa1 --since 7d -o sa1-rbac.yaml
      the smallest Role/RoleBinding (one per namespace) and ClusterRole/ClusterRoleBinding (cluster-scoped
      resources, cross-namespace requests, non-resource URLs) that allow exactly those requests: subresources as
      resource/subresource, resourceNames when every denial named an object. Review it, then
      `kubectl apply --dry-run=client -f sa1-rbac.yaml`.

  kaudit rbac suggest --user bob --since 30d --existing rbac.yaml     # only what bob's current RBAC lacks
  kaudit rbac suggest --user bob --since 30d --from-cluster [--kubeconfig K --context C]
      rbac.yaml from `kubectl get roles,rolebindings,clusterroles,clusterrolebindings -A -o yaml`; --from-cluster
      reads the same with kubectl. Denials the existing bindings already allow (granted since) are listed in
      the header with the binding that allows them, and left out of the YAML.

Denied impersonations (legacy impersonate, 1.35+ impersonate:<mode> and impersonate-on:<mode>:<verb>) are
suggested as the check that failed (read from the Forbidden message), not as the request behind them.
The user is the one RBAC evaluated: for impersonated requests, the impersonated user. Service accounts
(system:serviceaccount:NS:NAME) become ServiceAccount subjects. Requests are counted once (by auditID).
In embedded mode, while the sink owns the warehouse, the command asks the sink's API (KAUDIT_API_URL).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="rbac_command", metavar="ACTION", required=True)
    for name, help_ in (
        ("explain", "list the denied requests of a user, grouped, with counts and reasons"),
        ("suggest", "print Role/ClusterRole + binding YAML allowing exactly the denied requests"),
    ):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--user", required=True, help="user name or system:serviceaccount:NAMESPACE:NAME")
        s.add_argument(
            "--cluster", action="append", default=[], help="only this cluster (repeatable; default all)"
        )
        s.add_argument(
            "--since", default="24h", help="look back this far: 15m, 24h, 7d, ... or 'all' (default 24h)"
        )
        s.add_argument(
            "--from", dest="from_", metavar="TIME", help="absolute start (ISO 8601 or epoch seconds)"
        )
        s.add_argument("--to", metavar="TIME", help="absolute end (default now)")
        s.add_argument(
            "--format", choices=("text", "json", "yaml"), default="yaml" if name == "suggest" else "text"
        )
        if name == "suggest":
            s.add_argument("-o", "--output", help="write the YAML to this file instead of stdout")
            s.add_argument("--existing", action="append", default=[], metavar="FILE",
                           help="RBAC objects the subject may already have (kubectl get roles,rolebindings,"
                                "clusterroles,clusterrolebindings -A -o yaml); repeatable: suggest only what is missing")  # fmt: skip
            s.add_argument("--from-cluster", action="store_true",
                           help="read the existing RBAC from the API server with kubectl (--kubeconfig, --context)")
            s.add_argument("--kubeconfig", help="with --from-cluster: kubeconfig file (default: kubectl's)")
            s.add_argument("--context", help="with --from-cluster: kubeconfig context")
        add_clickhouse_flag(s)


def _via_api(s: Any, args: argparse.Namespace) -> dict[str, Any]:
    base = (s.api_url or f"http://{s.api_host}:{s.api_port}").rstrip("/")
    q: dict[str, Any] = {"user": args.user, "since": args.since, "format": "json"}
    if args.from_:
        q["from"] = args.from_
    if args.to:
        q["to"] = args.to
    if args.cluster:
        q["cluster"] = ",".join(args.cluster)
    req = urllib.request.Request(f"{base}/api/rbac?{urllib.parse.urlencode(q)}")
    if s.api_token:
        req.add_header("Authorization", f"Bearer {s.api_token}")
    from pipeline.access.tls import client_context

    with urllib.request.urlopen(req, timeout=60, context=client_context(s.api_ca_file)) as resp:  # noqa: S310
        return json.loads(resp.read())


def load_report(s: Any, args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.commands.serve import is_locked_error
    from pipeline.rbac import report
    from pipeline.warehouse.client import WarehouseLockedError, open_client
    from pipeline.warehouse.reader import Warehouse
    from pipeline.web.timerange import TimeRange, parse_range

    tr = parse_range(args.since, args.from_, args.to)
    if tr.label == "all":
        tr = TimeRange(0, tr.to_us, "all time")
    try:
        open_client(s)  # fails fast when a sink holds the embedded warehouse: then ask its API
    except Exception as exc:
        if not (isinstance(exc, WarehouseLockedError) or is_locked_error(exc)):
            raise
        return _via_api(s, args)
    wh = Warehouse(s, max_workers=1)
    try:
        denials = report.load_denials(wh, args.user, tr, args.cluster)
    finally:
        wh.close()
    return report.build(args.user, tr, args.cluster, denials)


def run(args: argparse.Namespace) -> int:
    from pipeline.rbac import report
    from pipeline.web.timerange import RangeError

    s = settings_from(args, clickhouse_dsn="clickhouse")
    try:
        rep = load_report(s, args)
    except RangeError as exc:
        print(f"kaudit rbac: {exc}", file=sys.stderr)
        return 2
    except urllib.error.HTTPError as exc:  # the API answered: say what it said (401 token, 400 input)
        try:
            reason = json.loads(exc.read()).get("error", "")
        except Exception:  # noqa: BLE001
            reason = ""
        print(f"kaudit rbac: the query API answered {exc.code}: {reason or exc.reason}"
              + (" (set KAUDIT_API_TOKEN to your reader token)" if exc.code == 401 else ""), file=sys.stderr)  # fmt: skip
        return 2
    except (urllib.error.URLError, OSError) as exc:
        print(
            f"kaudit rbac: the warehouse is owned by another process and its API did not answer: {exc}",
            file=sys.stderr,
        )
        return 1
    if getattr(args, "existing", None) or getattr(args, "from_cluster", False):
        from pipeline.rbac.existing import Existing, RbacInputError, load_files, load_from_cluster

        try:
            objs = load_files(args.existing) if args.existing else []
            if args.from_cluster:
                objs += load_from_cluster(args.kubeconfig, args.context)
        except RbacInputError as exc:
            print(f"kaudit rbac: {exc}", file=sys.stderr)
            return 2
        source = ", ".join([*args.existing, *(["the cluster"] if args.from_cluster else [])])
        rep = report.with_existing(rep, Existing.from_objects(objs), source)
    if args.format == "json":
        out = json.dumps(rep, indent=2) + "\n"
    elif args.format == "yaml" and args.rbac_command == "suggest":
        out = rep["yaml"] or (
            f"# the {rep['requests']} denied request(s) of {args.user} in {rep['range']['label']} are all allowed "
            "by the existing RBAC: nothing to add\n"
            if rep.get("already_allowed")
            else f"# no denied (403) requests for {args.user} in {rep['range']['label']}: nothing to allow\n"
        )
    else:
        out = report.explain_text(rep)
    if args.format != "json" and rep.get("refused") and not rep["yaml"]:
        out += "".join(f"# NOT GRANTED: {r['why']}\n" for r in rep["refused"])
    if getattr(args, "output", None):
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(out)
        print(f"wrote {args.output}: {rep['requests']} denied request(s) of {args.user}", file=sys.stderr)
    else:
        sys.stdout.write(terminal_text(out))  # names and messages are the requester's text: no raw escapes
    return 0
