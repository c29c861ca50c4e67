"""Alert rules as data: the default set (``default.yaml``) plus the user's file (``KAUDIT_RULES_FILE``).

A rule file is ``rules: [...]``; each rule:

    id: secret-read                  # unique, [a-z0-9-]; a user rule with a default's id replaces it
    title: Secret read by a user     # one line
    severity: medium                 # info | low | medium | high | critical
    description: why it matters      # text
    stages: [ResponseComplete]       # default [ResponseComplete, Panic]; "any" = every stage
    match: {verb: get, objectref_resource: secrets}   # see pipeline.agents.conditions
    threshold: {count: 10, by: [username], window_seconds: 60}   # optional: alert once per group and window
    tags: [mitre:T1552]
    enabled: true                    # `- {id: X, enabled: false}` switches a default rule off
    examples: {fire: [<audit event>...], quiet: [<audit event>...]}   # checked by the tests

Event rules alert once per (rule, cluster, auditID); threshold rules once per (rule, cluster, group, window)
when the count of matching events reaches ``count`` (event time, tumbling windows).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.agents.conditions import (
    ConditionError,
    EventView,
    Predicate,
    accessor,
    compile_condition,
    equality_values,
)

DEFAULT_RULES = Path(__file__).with_name("default.yaml")
SEVERITIES = ("info", "low", "medium", "high", "critical")
DEFAULT_STAGES = ("ResponseComplete", "Panic")
ALL_STAGES = ("RequestReceived", "ResponseStarted", "ResponseComplete", "Panic")
RULE_KEYS = {"id", "title", "severity", "description", "stages", "match", "threshold", "tags", "enabled", "examples"}
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class RuleError(ValueError):
    """A rule file that cannot be used; the message names the file, the rule and the field."""


@dataclass
class Rule:
    id: str
    title: str
    severity: str
    description: str
    stages: frozenset[str]
    match: Predicate
    match_spec: dict[str, Any]
    threshold: int = 0  # 0 = event rule
    group_by: tuple[str, ...] = ()
    group_get: tuple[Any, ...] = ()
    window_seconds: int | None = None
    tags: tuple[str, ...] = ()
    enabled: bool = True
    examples: dict[str, list[Any]] = field(default_factory=dict)
    source: str = ""
    resources: frozenset[str] | None = None  # index hint: objectref_resource values the rule can match
    verbs: frozenset[str] | None = None  # index hint: verb values the rule can match

    def group_key(self, view: EventView) -> str:
        parts = []
        for get in self.group_get:
            v = get(view)
            if isinstance(v, list):
                v = ",".join(map(str, v))
            parts.append("" if v is None else str(v))
        return "|".join(parts)


def alert_id(*parts: object) -> str:
    """Deterministic alert id: sha1 of the parts joined with '|' (see README-DEV-CONTRACTS.md)."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


def _parse_rule(raw: Any, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: a rule must be a mapping, got {type(raw).__name__}")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise RuleError(f"{where}: field 'id': needs a lowercase id like 'secret-read', got {rid!r}")
    at = f"{where} (rule '{rid}')"
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise RuleError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(RULE_KEYS))}")
    for key in ("title", "match"):
        if key not in raw:
            raise RuleError(f"{at}: field '{key}' is required")
    title = raw["title"]
    if not isinstance(title, str) or not title.strip():
        raise RuleError(f"{at}: field 'title': needs text")
    severity = str(raw.get("severity", "medium")).lower()
    if severity not in SEVERITIES:
        raise RuleError(f"{at}: field 'severity': {severity!r} is not one of {', '.join(SEVERITIES)}")
    stages_raw = raw.get("stages", list(DEFAULT_STAGES))
    if stages_raw == "any":
        stages_raw = list(ALL_STAGES)
    if isinstance(stages_raw, str):
        stages_raw = [stages_raw]
    if not isinstance(stages_raw, list) or not stages_raw or any(s not in ALL_STAGES for s in stages_raw):
        raise RuleError(f"{at}: field 'stages': use a list of {', '.join(ALL_STAGES)} or \"any\", got {stages_raw!r}")
    try:
        match = compile_condition(raw["match"], "match")
    except ConditionError as exc:
        raise RuleError(f"{at}: field '{exc.where}': {exc.message}") from None
    threshold, by, by_get, window = 0, (), (), None
    if raw.get("threshold") is not None:
        th = raw["threshold"]
        if not isinstance(th, dict) or set(th) - {"count", "by", "window_seconds"}:
            raise RuleError(f"{at}: field 'threshold': needs {{count: N, by: [fields], window_seconds: S}}")
        threshold = th.get("count")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise RuleError(f"{at}: field 'threshold.count': needs a positive integer, got {threshold!r}")
        by = th.get("by", [])
        by = [by] if isinstance(by, str) else by
        if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
            raise RuleError(f"{at}: field 'threshold.by': needs a list of field names")
        try:
            by_get = tuple(accessor(b, f"threshold.by.{b}") for b in by)
        except ConditionError as exc:
            raise RuleError(f"{at}: field '{exc.where}': {exc.message}") from None
        window = th.get("window_seconds")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise RuleError(f"{at}: field 'threshold.window_seconds': needs a positive integer, got {window!r}")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RuleError(f"{at}: field 'tags': needs a list of strings")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RuleError(f"{at}: field 'enabled': needs true or false")
    examples = raw.get("examples") or {}
    if not isinstance(examples, dict) or set(examples) - {"fire", "quiet"} or not all(
        isinstance(v, list) for v in examples.values()
    ):
        raise RuleError(f"{at}: field 'examples': needs {{fire: [events], quiet: [events]}}")
    return Rule(
        id=rid,
        title=title.strip(),
        severity=severity,
        description=str(raw.get("description", "")).strip(),
        stages=frozenset(stages_raw),
        match=match,
        match_spec=raw["match"],
        threshold=threshold,
        group_by=tuple(by),
        group_get=by_get,
        window_seconds=window,
        tags=tuple(tags),
        enabled=enabled,
        examples={k: list(v) for k, v in examples.items()},
        source=where,
        resources=equality_values(raw["match"], "objectref_resource"),
        verbs=equality_values(raw["match"], "verb"),
    )


def load_rule_file(path: Path | str, *, allow_disable_only: bool = False) -> tuple[list[Rule], set[str]]:
    """(rules, ids switched off) from one YAML file; RuleError names the file, rule and field."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RuleError(f"rules file {path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"rules file {path}: not valid YAML: {exc}") from None
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RuleError(f"rules file {path}: needs a top-level 'rules:' list")
    rules: list[Rule] = []
    disabled: set[str] = set()
    seen: set[str] = set()
    for i, raw in enumerate(doc["rules"]):
        where = f"rules file {path}, rule #{i + 1}"
        if allow_disable_only and isinstance(raw, dict) and set(raw) <= {"id", "enabled"} and raw.get("enabled") is False:
            disabled.add(str(raw.get("id")))
            continue
        rule = _parse_rule(raw, where)
        if rule.id in seen:
            raise RuleError(f"{where} (rule '{rule.id}'): field 'id': duplicate id in this file")
        seen.add(rule.id)
        rules.append(rule)
    return rules, disabled


def load_rules(user_file: Path | str | None = None, *, include_default: bool = True) -> list[Rule]:
    """The default set, then the user's file: same id replaces, ``{id: X, enabled: false}`` switches off."""
    rules: dict[str, Rule] = {}
    if include_default:
        for r in load_rule_file(DEFAULT_RULES)[0]:
            rules[r.id] = r
    if user_file:
        user, disabled = load_rule_file(user_file, allow_disable_only=True)
        for rid in disabled:
            if rid not in rules:
                raise RuleError(f"rules file {user_file}: rule '{rid}': field 'id': no such rule to switch off")
            rules[rid].enabled = False
        for r in user:
            rules[r.id] = r
    return list(rules.values())


@dataclass(slots=True)
class Match:
    rule: Rule
    view: EventView


class RuleSet:
    """Enabled rules indexed by (objectref_resource, verb, stage): an event meets only the rules that can match it."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = [r for r in rules if r.enabled]
        self._candidates: dict[tuple[str, str, str], list[Rule]] = {}

    def candidates(self, resource: str, verb: str, stage: str) -> list[Rule]:
        key = (resource, verb, stage)
        found = self._candidates.get(key)
        if found is None:
            found = [
                r
                for r in self.rules
                if stage in r.stages
                and (r.resources is None or resource in r.resources)
                and (r.verbs is None or verb in r.verbs)
            ]
            if len(self._candidates) < 20_000:  # bounded: resource/verb names are a small set in practice
                self._candidates[key] = found
        return found

    def matches(self, view: EventView) -> list[Rule]:
        ev = view.ev
        return [r for r in self.candidates(ev["objectref_resource"], ev["verb"], ev["stage"]) if r.match(view)]


EXAMPLE_TS = "2024-05-01T12:00:10.000000Z"


def example_event(partial: dict[str, Any], n: int = 0) -> dict[str, Any]:
    """A full audit.k8s.io/v1 event from a rule example: missing fields get harmless defaults."""
    ev: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": f"example-{n:06d}",
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/example",
        "verb": "get",
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"],
        "userAgent": "kubectl/v1.30.1 (linux/amd64) kubernetes/7c48c2b",
        "objectRef": {"resource": "pods", "namespace": "default", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": EXAMPLE_TS,
        "stageTimestamp": EXAMPLE_TS,
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
    }
    ev.update(partial)
    return ev
