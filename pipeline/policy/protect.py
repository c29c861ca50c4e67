"""What detection depends on, derived from the alert rules themselves (default.yaml plus KAUDIT_RULES_FILE).

A suggested policy rule selects requests by what an audit policy can match on (user, verb, resource, group,
subresource, non-resource path) and lowers them (level None, level Metadata, or omitted stages). For each enabled
alert rule, ``may_match`` evaluates the rule's condition in three-valued logic over that scope:

- fields the scope pins (username, verb, objectref_resource, objectref_subresource, objectref_apigroup, the
  non-resource request_path, stage) are known exactly: future requests in the scope have these values;
- fields a policy cannot select on, but the measured window shows (status codes, groups, user agents, whether
  the user impersonated, level) are known *empirically*: as observed in the window;
- every other field (source IP, names, objects, command, decision, ...) is unknown.

The answer is False (the rule can never match such a request), True or unknown; anything but False protects
the scope from the action that would take the rule's input away: None (the event is gone), Metadata (the rule
reads request_object/response_object), omitting a stage the rule listens to.

On top of the rules, a floor that no rule set may lower (the issue's list, as kaudit's own stance): writes are
never dropped, RBAC is never touched, Secrets and exec/attach/port-forward keep at least their metadata, and
requests of anonymous users, impersonators and anyone who got a 401/403 in the window keep their events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.agents.conditions import OBJECT_ROOTS, POD_SPEC_ROOT, ConditionError, EventView, compile_test
from pipeline.agents.rules import Rule, fields_of

READS = frozenset({"get", "list", "watch"})
ACTIONS = ("None", "Metadata", "omit:RequestReceived", "omit:ResponseStarted")
KNOWN = ("username", "verb", "objectref_resource", "objectref_subresource", "objectref_apigroup", "stage")
EMPIRICAL = ("responsestatus_code", "usergroups", "useragent", "impersonated_username", "impersonated_groups",
             "impersonation_constraint", "level")
SECRETISH = frozenset({"secrets", "tokenreviews", "tokenrequests", "certificatesigningrequests"})
INTERACTIVE = frozenset({"exec", "attach", "portforward", "proxy", "token"})
RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass
class Scope:
    """The requests one candidate policy rule would select, with what the window showed about them."""

    username: str
    verbs: frozenset[str]
    apigroup: str = ""
    resource: str = ""
    subresource: str = ""
    path: str = ""  # non-resource URL (then resource is "")
    stages: set[str] = field(default_factory=set)
    levels: set[str] = field(default_factory=set)
    codes: set[int] = field(default_factory=set)
    groups: set[tuple[str, ...]] = field(default_factory=set)
    useragents: set[str] = field(default_factory=set)
    impersonated: bool = False

    def facts(self, stages: Iterable[str]) -> dict[str, list[Any]]:
        f: dict[str, list[Any]] = {
            "username": [self.username],
            "verb": sorted(self.verbs),
            "objectref_resource": [self.resource],
            "objectref_subresource": [self.subresource],
            "objectref_apigroup": [self.apigroup],
            "stage": sorted(stages),
            "responsestatus_code": sorted(self.codes),
            "usergroups": [list(g) for g in sorted(self.groups)],
            "useragent": sorted(self.useragents),
            "level": sorted(self.levels),
        }
        if not self.impersonated:  # no impersonation in the window: nor its constraint (Kubernetes 1.35+)
            f["impersonated_username"] = [""]
            f["impersonated_groups"] = [[]]
            f["impersonation_constraint"] = [""]
        if self.path:
            f["request_path"] = [self.path]
        return {k: v for k, v in f.items() if v}  # nothing observed: unknown


def _and(values: Iterable[bool | None]) -> bool | None:
    out: bool | None = True
    for v in values:
        if v is False:
            return False
        if v is None:
            out = None
    return out


def _or(values: Iterable[bool | None]) -> bool | None:
    out: bool | None = False
    for v in values:
        if v is True:
            return True
        if v is None:
            out = None
    return out


def eval3(cond: Any, facts: dict[str, list[Any]]) -> bool | None:
    """A rule condition over a scope: True (every request matches), False (none can), None (unknown)."""
    if not isinstance(cond, dict):
        return None
    parts: list[bool | None] = []
    for key, value in cond.items():
        if key == "all":
            parts.append(_and(eval3(c, facts) for c in value) if isinstance(value, list) else None)
        elif key == "any":
            parts.append(_or(eval3(c, facts) for c in value) if isinstance(value, list) else None)
        elif key == "not":
            r = eval3(value, facts)
            parts.append(None if r is None else not r)
        else:
            parts.append(_test3(str(key), value, facts))
    return _and(parts)


_PREDS: dict[tuple[str, bytes], Any] = {}
_ANSWERS: dict[tuple[str, bytes, bytes], bool] = {}


def _answer(name: str, test: Any, value: Any) -> bool | None:
    """One field test on one value, compiled once per test and remembered per value (units share values)."""
    tkey = orjson.dumps(test, option=orjson.OPT_SORT_KEYS, default=str)
    key = (name, tkey, orjson.dumps(value, default=str))
    hit = _ANSWERS.get(key)
    if hit is not None:
        return hit
    pred = _PREDS.get((name, tkey))
    if pred is None:
        try:
            pred = compile_test(name, test, name)
        except ConditionError:
            return None
        _PREDS[(name, tkey)] = pred
    ev = {"request_uri": value} if name == "request_path" else {name: value}
    out = bool(pred(EventView(ev)))
    if len(_ANSWERS) > 200_000:
        _ANSWERS.clear()
    _ANSWERS[key] = out
    return out


def _test3(name: str, test: Any, facts: dict[str, list[Any]]) -> bool | None:
    values = facts.get(name)
    if not values:
        return None
    outs = {_answer(name, test, v) for v in values}
    return outs.pop() if len(outs) == 1 else None


def reads_objects(rule: Rule) -> bool:
    names = fields_of(rule.match_spec) | set(rule.group_by)
    roots = {n.partition(".")[0].partition("[")[0] for n in names}
    return bool(roots & {*OBJECT_ROOTS, POD_SPEC_ROOT})


def unknown_inputs(rule: Rule, facts: dict[str, list[Any]]) -> list[str]:
    """The fields of the rule a scope leaves unknown (why a rule could not be ruled out)."""
    return sorted(n for n in fields_of(rule.match_spec) if n not in facts)


@dataclass
class Verdict:
    allowed: dict[str, bool]
    reasons: dict[str, list[str]]  # action -> why not


def judge(scope: Scope, rules: list[Rule]) -> Verdict:
    """Which of ACTIONS this scope may take, and why not for the others."""
    reasons: dict[str, list[str]] = {a: [] for a in ACTIONS}
    # --- the floor ---------------------------------------------------------------------------------
    if scope.apigroup == RBAC_GROUP:
        for a in ACTIONS:
            reasons[a].append("floor: RBAC is never lowered")
    if scope.subresource in INTERACTIVE and scope.resource:
        for a in ACTIONS:
            reasons[a].append(f"floor: {scope.resource}/{scope.subresource} (interactive access) is never lowered")
    if not scope.verbs <= READS:
        reasons["None"].append("floor: writes are never dropped")
    if scope.resource in SECRETISH:
        reasons["None"].append(f"floor: {scope.resource} access keeps its metadata")
    if scope.username == "system:anonymous" or any("system:unauthenticated" in g for g in scope.groups) or not scope.username:
        reasons["None"].append("floor: anonymous requests are never dropped")
    if scope.impersonated:
        reasons["None"].append("floor: this user impersonated in the window")
    if scope.codes & {401, 403}:
        reasons["None"].append("floor: 401/403 seen in the window for this user and verbs")
    # --- the rules ---------------------------------------------------------------------------------
    stages_seen = scope.stages | {"ResponseComplete"}
    facts_by: dict[frozenset[str], dict[str, list[Any]]] = {}
    for rule in rules:
        if not rule.enabled or getattr(rule, "inactive", ""):  # inactive: an empty caller list, it never fires
            continue
        for action in ACTIONS:
            if action == "None":
                stages = rule.stages & stages_seen
            elif action == "Metadata":
                if not reads_objects(rule):
                    continue
                stages = rule.stages & stages_seen
            else:
                stage = action.split(":")[1]
                stages = rule.stages & {stage}
            if not stages:
                continue
            key = frozenset(stages)
            facts = facts_by.get(key) or facts_by.setdefault(key, scope.facts(stages))
            verdict = eval3(rule.match_spec, facts)
            if verdict is False:
                continue
            why = "matches" if verdict else "may match"
            unknown = unknown_inputs(rule, facts)
            detail = f" (reads {', '.join(unknown)}, which a policy cannot select on)" if unknown and verdict is None else ""
            if action == "Metadata":
                detail += " and reads the request/response object"
            reasons[action].append(f"rule {rule.id} {why}{detail}")
    return Verdict({a: not reasons[a] for a in ACTIONS}, reasons)
