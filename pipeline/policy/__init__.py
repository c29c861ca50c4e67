"""``kaudit policy suggest``: an audit.k8s.io/v1 Policy that lowers the noisiest traffic the warehouse measured,
without taking away what detection depends on (``pipeline.policy.protect``), with its estimated effect.

The measured volume comes from the hourly rollup (``pipeline.volume``): per user, verb, resource, subresource,
non-resource path, stage and level, events, JSON bytes and object bytes. Each (user, verb, resource) -- or
(user, non-resource path) -- is a unit scope; its best allowed action is level None, else level Metadata and/or
omitted stages (RequestReceived, ResponseStarted); units are taken in order of what they save until the target
reduction is reached, then merged into as few policy rules as keep the selection exact (a rule's users x verbs x
resources is always a set of chosen units). New rules go first (an audit policy's first matching rule wins),
followed by the current policy (``--current``) or kaudit's recommended one.
"""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.agents.rules import Rule
from pipeline.config import REPO_ROOT
from pipeline.policy.protect import READS, Scope, judge
from pipeline.volume import Run, Totals, Window, pct

RECOMMENDED = REPO_ROOT / "infra" / "kubernetes" / "audit-policy.yaml"
LEVEL_RANK = {"None": 0, "Metadata": 1, "Request": 2, "RequestResponse": 3}
LEVELS = tuple(LEVEL_RANK)
OMITTABLE = ("RequestReceived", "ResponseStarted")


class PolicyError(ValueError):
    """A current policy that cannot be read, or a request that cannot be answered; the message says why."""


@dataclass
class Row:
    username: str
    verb: str
    apigroup: str
    resource: str
    subresource: str
    path: str
    stage: str
    level: str
    codes: set[int]
    impersonated: bool
    groups: set[tuple[str, ...]]
    useragents: set[str]
    events: int
    bytes: int
    object_bytes: int


@dataclass
class Unit:
    """One unit scope, its rows and the action chosen for it."""

    scope: Scope
    rows: list[Row]
    level: str = ""  # the new rule's level
    omit: tuple[str, ...] = ()
    saved: Totals = field(default_factory=Totals)
    reasons: dict[str, list[str]] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        s = self.scope
        return (s.username, s.apigroup, s.resource, s.subresource, s.path)

    @property
    def total(self) -> Totals:
        return Totals(sum(r.events for r in self.rows), sum(r.bytes for r in self.rows),
                      sum(r.object_bytes for r in self.rows))  # fmt: skip


@dataclass
class PolicyRule:
    level: str
    omit: tuple[str, ...]
    users: list[str]
    verbs: list[str]
    apigroup: str = ""
    resources: list[str] = field(default_factory=list)  # "pods" or "pods/log"
    paths: list[str] = field(default_factory=list)
    saved: Totals = field(default_factory=Totals)
    units: list[Unit] = field(default_factory=list)


@dataclass
class Suggestion:
    window: Window
    totals: Totals
    rules: list[PolicyRule]
    saved: Totals
    target: float
    measure: str
    protected: list[tuple[str, Totals]]  # reason -> volume kept from level None because of it
    base_name: str
    base_text: str
    text: str = ""
    diff: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def share(self) -> tuple[float, float]:
        return self.totals.share(self.saved)


def evidence(run: Run, w: Window) -> list[Row]:
    where, params = w.where()
    rows = run(
        "SELECT username, verb, objectref_apigroup, objectref_resource, objectref_subresource, request_path, stage, "
        "level, groupUniqArray(responsestatus_code), max(impersonated), groupUniqArray(usergroups), "
        "groupUniqArray(100)(useragent), sum(events), sum(bytes), sum(object_bytes) "
        f"FROM {w.source()} WHERE {where} GROUP BY ALL",
        params,
    )
    return [Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], {int(c) for c in r[8]}, bool(r[9]),
                {tuple(g) for g in r[10]}, set(r[11]), int(r[12]), int(r[13]), int(r[14])) for r in rows]  # fmt: skip


def units_of(rows: list[Row]) -> list[Unit]:
    """Unit scopes: (user, verb, group, resource, subresource) and (user, non-resource path)."""
    by: dict[tuple, list[Row]] = defaultdict(list)
    errors_nonresource: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        if r.resource:
            by[(r.username, r.verb, r.apigroup, r.resource, r.subresource, "")].append(r)
        elif r.path:
            by[(r.username, r.verb, "", "", "", r.path)].append(r)
        else:  # a non-resource request that failed: its path is not kept; its codes count for the user
            errors_nonresource[r.username] |= r.codes
    out = []
    for (user, verb, group, res, sub, path), rs in by.items():
        s = Scope(user, frozenset({verb}), group, res, sub, path)
        for r in rs:
            s.stages.add(r.stage)
            s.levels.add(r.level)
            s.codes |= r.codes
            s.groups |= r.groups
            s.useragents |= r.useragents
            s.impersonated |= r.impersonated
        if path:
            s.codes |= errors_nonresource.get(user, set())
        out.append(Unit(s, rs))
    return out


def choose(unit: Unit, rules: list[Rule]) -> None:
    """The best allowed action for a unit (None, else Metadata and/or omitted stages) and what it saves."""
    v = judge(unit.scope, rules)
    unit.reasons = v.reasons
    total = unit.total
    if v.allowed["None"]:
        unit.level, unit.omit, unit.saved = "None", (), total
        return
    levels = unit.scope.levels
    omit = tuple(s for s in OMITTABLE if s in unit.scope.stages and v.allowed[f"omit:{s}"])
    lower = v.allowed["Metadata"] and any(LEVEL_RANK.get(lv, 0) > 1 for lv in levels)
    if lower:
        level = "Metadata"
    elif len(levels) == 1 and omit:
        level = next(iter(levels))  # keep the level the current policy gives, only drop stages
    else:
        return
    saved = Totals()
    for r in unit.rows:
        if r.stage in omit:
            saved.events += r.events
            saved.bytes += r.bytes
            saved.object_bytes += r.object_bytes
        elif lower and LEVEL_RANK.get(r.level, 0) > 1:
            saved.bytes += r.object_bytes
            saved.object_bytes += r.object_bytes
    if saved.events or saved.bytes:
        unit.level, unit.omit, unit.saved = level, omit, saved


def merge(units: list[Unit]) -> list[PolicyRule]:
    """As few rules as keep the selection exact: per user and resource the verbs with the same action, then the
    resources with the same verbs, then the users with the same verbs and resources."""
    step1: dict[tuple, list[Unit]] = defaultdict(list)
    for u in units:
        step1[(u.key, u.level, u.omit)].append(u)
    step2: dict[tuple, list[tuple[tuple, list[Unit]]]] = defaultdict(list)
    for (key, level, omit), us in step1.items():
        user, group, res, sub, path = key
        verbs = tuple(sorted({v for u in us for v in u.scope.verbs}))
        kind = "path" if path else "resource"
        step2[(user, group, kind, level, omit, verbs)].append(((res, sub, path), us))
    step3: dict[tuple, list[tuple[str, list[Unit]]]] = defaultdict(list)
    for (user, group, kind, level, omit, verbs), items in step2.items():
        targets = tuple(sorted(p if kind == "path" else (f"{r}/{s}" if s else r) for (r, s, p), _ in items))
        step3[(group, kind, level, omit, verbs, targets)].append((user, [u for _, us in items for u in us]))
    out = []
    for (group, kind, level, omit, verbs, targets), items in step3.items():
        us = [u for _, xs in items for u in xs]
        pr = PolicyRule(level, omit, sorted(user for user, _ in items), list(verbs), group,
                        list(targets) if kind == "resource" else [], list(targets) if kind == "path" else [],
                        units=us)  # fmt: skip
        pr.saved = Totals(sum(u.saved.events for u in us), sum(u.saved.bytes for u in us),
                          sum(u.saved.object_bytes for u in us))  # fmt: skip
        out.append(pr)
    return out


def suggest(run: Run, w: Window, rules: list[Rule], *, target: float = 0.6, measure: str = "events",
            current: Path | None = None, min_share: float = 0.001) -> Suggestion:  # fmt: skip
    """The suggested policy for the window's measured traffic; stops once ``target`` of ``measure`` is saved.
    Units saving less than ``min_share`` of both events and bytes are left out (rules that change nothing)."""
    if measure not in ("events", "bytes"):
        raise PolicyError("--measure is events or bytes")
    base_name, base_text = _base(current)
    rows = evidence(run, w)
    totals = Totals(sum(r.events for r in rows), sum(r.bytes for r in rows), sum(r.object_bytes for r in rows))
    units = units_of(rows)
    for u in units:
        choose(u, rules)
    enabled = [r for r in rules if r.enabled and not r.inactive]  # an empty caller list: the rule does not run

    def gain(u: Unit) -> tuple[int, int]:
        return (u.saved.events, u.saved.bytes) if measure == "events" else (u.saved.bytes, u.saved.events)

    def worth(u: Unit) -> bool:
        e, b = totals.share(u.saved)
        return max(e, b) >= min_share

    candidates = sorted((u for u in units if u.level and worth(u)), key=gain, reverse=True)
    goal = target * (totals.events if measure == "events" else totals.bytes)
    chosen: list[Unit] = []
    saved = Totals()
    for u in candidates:
        if (saved.events if measure == "events" else saved.bytes) >= goal > 0:
            break
        chosen.append(u)
        saved.events += u.saved.events
        saved.bytes += u.saved.bytes
        saved.object_bytes += u.saved.object_bytes
    prules = sorted(merge(chosen), key=lambda p: (p.saved.events, p.saved.bytes) if measure == "events"
                    else (p.saved.bytes, p.saved.events), reverse=True)  # fmt: skip
    protected: dict[str, Totals] = defaultdict(Totals)
    for u in units:
        if u.level != "None":
            t = u.total
            for why in u.reasons.get("None", []):
                key = why.split(" (reads ")[0]
                protected[key].events += t.events
                protected[key].bytes += t.bytes
    sug = Suggestion(w, totals, prules, saved, target, measure,
                     sorted(protected.items(), key=lambda kv: -kv[1].events), base_name, base_text)  # fmt: skip
    sug.notes = notes(enabled, sug)
    sug.text = render(sug)
    validate(sug.text)
    if current is not None:
        sug.diff = "".join(difflib.unified_diff(base_text.splitlines(True), sug.text.splitlines(True),
                                                fromfile=str(current), tofile="suggested"))  # fmt: skip
    return sug


def _base(current: Path | None) -> tuple[str, str]:
    path = current or RECOMMENDED
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"--current {path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"--current {path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "Policy" or not str(doc.get("apiVersion", "")).startswith("audit.k8s.io/"):
        raise PolicyError(f"--current {path}: not an audit.k8s.io Policy (kind: Policy, apiVersion: audit.k8s.io/v1)")
    if not isinstance(doc.get("rules"), list):
        raise PolicyError(f"--current {path}: needs a 'rules:' list")
    return (str(path) if current else "kaudit's recommended policy (infra/kubernetes/audit-policy.yaml)"), text


def notes(rules: list[Rule], sug: Suggestion) -> list[str]:
    n_none = sum(1 for r in sug.rules if r.level == "None")
    return [
        f"Derived from {len(rules)} enabled alert rules (default.yaml and KAUDIT_RULES_FILE): a scope is lowered "
        "only where no rule that could match it loses its input (None: the event; Metadata: the request/response "
        "object; an omitted stage: that stage's event).",
        "An audit policy cannot match on response codes, source IPs or groups it does not name: level None was "
        "chosen only for reads whose users got no 401/403 in the measured window, never impersonated and are not "
        "anonymous, and only where no rule reads a field a policy cannot select on (source IP, names, objects). "
        "A future 401/403 in such a scope would be dropped with it; levels Metadata and omitted stages keep every "
        f"code. {n_none} rule(s) use None.",
        "Never lowered whatever the rules say: writes (kept at least at Metadata), RBAC, Secrets and token access "
        "(metadata kept), exec/attach/port-forward/proxy, anonymous requests, impersonation and 401/403.",
        f"Estimates assume the traffic of the window repeats and that {sug.base_name} produced it.",
    ]


def _flow(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def rule_yaml(r: PolicyRule, totals: Totals, indent: str = "  ") -> str:
    ev, by = totals.share(r.saved)
    lines = [f"{indent}# kaudit policy suggest: -{pct(ev)} of events, -{pct(by)} of bytes "
             f"({r.saved.events:,} events, {r.saved.bytes:,} bytes in the window)"]  # fmt: skip
    lines.append(f"{indent}- level: {r.level}")
    pad = indent + "  "
    if r.omit:
        lines.append(f"{pad}omitStages: {_flow(list(r.omit))}")
    lines.append(f"{pad}users: {_flow(r.users)}")
    lines.append(f"{pad}verbs: {_flow(r.verbs)}")
    if r.paths:
        lines.append(f"{pad}nonResourceURLs: {_flow(r.paths)}")
    else:
        lines.append(f"{pad}resources:")
        lines.append(f"{pad}  - group: {json.dumps(r.apigroup)}")
        lines.append(f"{pad}    resources: {_flow(r.resources)}")
    return "\n".join(lines)


def header(sug: Suggestion) -> str:
    ev, by = sug.share
    w = sug.window
    out = [
        "# Suggested by `kaudit policy suggest` from the volume measured "
        f"{_iso(w.from_s)} .. {_iso(w.to_s)} UTC ({', '.join(w.clusters) or 'all clusters'}):",
        f"#   {sug.totals.events:,} events, {sug.totals.bytes:,} bytes. Estimated reduction: -{pct(ev)} of events, "
        f"-{pct(by)} of bytes (target {pct(sug.target)} of {sug.measure}) with {len(sug.rules)} new rule(s) first,",
        f"#   followed by {sug.base_name}.",
        "# Protected (kept from level None; share of the window's events and bytes):",
    ]
    for why, t in sug.protected[:15]:
        e, b = sug.totals.share(t)
        out.append(f"#   - {why}: {pct(e)} of events, {pct(b)} of bytes")
    if not sug.protected:
        out.append("#   (nothing in this window)")
    out.append("# Why:")
    for n in sug.notes:
        out.append("#   - " + n)
    return "\n".join(out)


def _iso(s: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%d %H:%M")


def render(sug: Suggestion) -> str:
    """The base policy's text with the new rules inserted first under ``rules:`` (its comments kept)."""
    lines = sug.base_text.splitlines()
    at = next((i for i, line in enumerate(lines) if line.rstrip() == "rules:"), None)
    if at is None:  # e.g. ``rules: [...]`` in flow style: rewrite the document
        doc = yaml.safe_load(sug.base_text)
        body = yaml.safe_dump({k: v for k, v in doc.items() if k != "rules"}, sort_keys=False).rstrip().splitlines()
        rest = yaml.safe_dump(doc["rules"], sort_keys=False).rstrip().splitlines()
        lines = [*body, "rules:", *["  " + x for x in rest]]
        at = len(body)
    nxt = next((line for line in lines[at + 1 :] if line.strip().startswith("- ")), "  - ")
    indent = nxt[: len(nxt) - len(nxt.lstrip())]
    new = [rule_yaml(r, sug.totals, indent) for r in sug.rules]
    out = [header(sug), *lines[: at + 1], *new, *lines[at + 1 :]]
    return "\n".join(out) + "\n"


def validate(text: str) -> None:
    """The shape kube-apiserver's policy loader checks (levels, stages, rule fields), before anyone deploys it."""
    doc = yaml.safe_load(text)
    if doc.get("apiVersion") not in ("audit.k8s.io/v1",) or doc.get("kind") != "Policy":
        raise PolicyError("the result is not an audit.k8s.io/v1 Policy")
    allowed = {"level", "users", "userGroups", "verbs", "resources", "namespaces", "nonResourceURLs", "omitStages",
               "omitManagedFields"}  # fmt: skip
    for i, r in enumerate(doc.get("rules") or []):
        if not isinstance(r, dict) or r.get("level") not in LEVELS or set(r) - allowed:
            raise PolicyError(f"rule {i + 1} of the result is not a valid policy rule: {r!r}")
        if r.get("nonResourceURLs") and (r.get("resources") or r.get("namespaces")):
            raise PolicyError(f"rule {i + 1}: nonResourceURLs cannot be combined with resources/namespaces")
        for s in r.get("omitStages") or []:
            if s not in ("RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"):
                raise PolicyError(f"rule {i + 1}: unknown stage {s!r}")


def summary(sug: Suggestion) -> str:
    """The human report printed next to the policy (stderr when the policy goes to stdout)."""
    ev, by = sug.share
    out = [f"kaudit policy suggest: {len(sug.rules)} rule(s), estimated -{pct(ev)} of events, -{pct(by)} of bytes "
           f"(target {pct(sug.target)} of {sug.measure}; window: {sug.totals.events:,} events, {sug.totals.bytes:,} bytes)"]  # fmt: skip
    for r in sug.rules:
        e, b = sug.totals.share(r.saved)
        what = ",".join(r.paths) if r.paths else ",".join(f"{r.apigroup + '/' if r.apigroup else ''}{x}" for x in r.resources)
        stages = f" omitStages {','.join(r.omit)}" if r.omit else ""
        out.append(f"  -{pct(e):>5} events -{pct(b):>5} bytes  level {r.level}{stages}: {','.join(r.verbs)} {what} "
                   f"by {', '.join(r.users[:3])}{' +' + str(len(r.users) - 3) if len(r.users) > 3 else ''}")  # fmt: skip
    if sug.protected:
        out.append("protected (kept from None):")
        for why, t in sug.protected[:10]:
            e, b = sug.totals.share(t)
            out.append(f"  {pct(e):>5} of events: {why}")
    return "\n".join(out)


__all__ = ["PolicyError", "Suggestion", "suggest", "summary", "READS"]
