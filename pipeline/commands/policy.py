"""kaudit policy suggest: an audit policy that cuts the measured volume without blinding detection."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "suggest an audit.k8s.io/v1 Policy that cuts the measured audit volume (kaudit policy suggest)"
DESCRIPTION = """\
kaudit policy suggest reads the measured volume (the warehouse's hourly rollup) and writes an audit.k8s.io/v1
Policy whose new first rules lower the noisiest traffic: level None, level Metadata, or omitted stages
(RequestReceived, ResponseStarted), per user, verb and resource (or non-resource path). Each rule carries, as a
comment, the share of events and bytes it removes; the header has the total estimate, what was protected and why.

It never lowers what detection depends on: writes, RBAC, Secrets access metadata, exec/attach/port-forward,
anonymous requests, impersonation, 401/403, and the inputs of every enabled alert rule (default.yaml and
KAUDIT_RULES_FILE), derived from the rules' conditions: a rule that could match a scope keeps that scope's events
(None), objects (Metadata) or stages. Level None is used only for reads whose users got no 401/403 in the window
(a policy cannot match on response codes).

  kaudit policy suggest --since 7d > policy.yaml
  kaudit policy suggest --current /etc/kubernetes/audit-policy.yaml --target 60% --cluster prod -o new.yaml
  kaudit policy suggest --current policy.yaml --diff      # a unified diff against the current policy

The policy goes to stdout (or -o FILE), the summary to stderr.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="policy_command", metavar="ACTION")
    s = sub.add_parser("suggest", help="write a policy that cuts the measured volume", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    s.add_argument("--since", default="7d", help="measured window: 24h, 7d, 2w (default 7d)")
    s.add_argument("--from", dest="from_", metavar="TIME", help="exact window from this time (ISO or epoch seconds; "
                   "reads audit_events instead of the hourly rollup)")
    s.add_argument("--to", metavar="TIME", help="end of the exact window (default now)")
    s.add_argument("--cluster", action="append", default=[], help="only this cluster's traffic (repeat or a,b)")
    s.add_argument("--current", type=Path, help="the API server's current policy: new rules go before its rules "
                   "(default: kaudit's recommended infra/kubernetes/audit-policy.yaml)")  # fmt: skip
    s.add_argument("--target", default="60%", help="stop once this share is removed (default 60%%; 100%% = all allowed)")
    s.add_argument("--measure", choices=("events", "bytes"), default="events", help="what --target counts (default events)")
    s.add_argument("--min-share", default="0.1%", help="leave out rules saving less than this of both events and "
                   "bytes (default 0.1%%)")  # fmt: skip
    s.add_argument("--rules-file", type=Path, help="extra alert rules to protect (KAUDIT_RULES_FILE)")
    s.add_argument("-o", "--output", type=Path, help="write the policy here instead of stdout")
    s.add_argument("--diff", action="store_true", help="print a unified diff against --current instead of the policy")
    s.add_argument("--api", metavar="URL", help="query API of the warehouse owner (KAUDIT_API_URL)")
    add_clickhouse_flag(s)


def parse_target(text: str) -> float:
    t = text.strip().rstrip("%")
    try:
        v = float(t) / 100 if text.strip().endswith("%") or float(t) > 1 else float(t)
    except ValueError:
        raise ValueError(f"--target wants a share like 60% or 0.6, got {text!r}") from None
    if not 0 < v <= 1:
        raise ValueError(f"--target wants a share between 0 and 100%, got {text!r}")
    return v


def parse_share(text: str) -> float:
    t = text.strip()
    try:
        v = float(t.rstrip("%")) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"--min-share wants a share like 0.1% or 0.001, got {text!r}") from None
    if not 0 <= v < 1:
        raise ValueError(f"--min-share wants a share between 0 and 100%, got {text!r}")
    return v


def run(args: argparse.Namespace) -> int:
    if getattr(args, "policy_command", None) != "suggest":
        print("kaudit policy: use `kaudit policy suggest` (see --help)", file=sys.stderr)
        return 2
    from pipeline.agents.rules import RuleError, load_rules
    from pipeline.policy import PolicyError, suggest, summary
    from pipeline.query.execute import ExecError
    from pipeline.volume import VolumeError, window_from_args
    from pipeline.volume.source import warehouse_runner

    s = settings_from(args, clickhouse_dsn="clickhouse", api_url="api", rules_file="rules_file")
    try:
        target = parse_target(args.target)
        w = window_from_args(args.since, args.from_, args.to, args.cluster)
        rules = load_rules(s.rules_file)
        with warehouse_runner(s) as q:
            sug = suggest(q, w, rules, target=target, measure=args.measure, current=args.current,
                          min_share=parse_share(args.min_share))  # fmt: skip
    except (ValueError, VolumeError, PolicyError, RuleError, ExecError) as exc:
        print(f"kaudit policy suggest: {exc}", file=sys.stderr)
        return 2
    if not sug.totals.events:
        print("kaudit policy suggest: no events measured in this window (is the sink writing? try --since)",
              file=sys.stderr)  # fmt: skip
        return 1
    out = sug.diff if args.diff and args.current else sug.text
    if args.output:
        args.output.write_text(out)
    else:
        sys.stdout.write(out)
    print(summary(sug), file=sys.stderr)
    return 0
