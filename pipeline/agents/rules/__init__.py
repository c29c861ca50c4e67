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
    first_seen: {terms: [username], lookback_days: 30, learning_days: 7}    # optional: see pipeline.agents.memory
    sequence: {after: {match: {...}, key: request_subjects}, key: username, window_seconds: 3600}   # optional

Event rules alert once per (rule, cluster, auditID); threshold rules once per (rule, cluster, group, window)
when the count of matching events reaches ``count`` (event time, tumbling windows); first-seen rules once per
(rule, cluster, auditID) for an event whose terms are new; sequence rules once per A (its first B).

An example is a partial event, or ``{history: [events], event: {...}}``: the history goes through the same
processor first (its alerts are not counted), then the event must (fire) or must not (quiet) alert. Any example
event may carry ``ago: 8d`` (s, m, h, d) to move its timestamps back from the example time.

A file may name caller lists, ``lists: {tor-exits: tor-exits.txt}`` (paths relative to the file; see
``pipeline.agents.callers``), used as ``sourceip: {in_list: tor-exits}``. A user file's list replaces a default
list of the same name. A rule that uses an empty list is inactive (``kaudit worker --check`` says which).
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.agents import memory as M
from pipeline.agents.callers import CidrList, ListError, load_list, parse_list
from pipeline.agents.conditions import (
    LIST_FIELDS,
    ConditionError,
    EventView,
    Lists,
    Predicate,
    _int_texts,
    accessor,
    compile_condition,
    equality_values,
)
from pipeline.models import native

DEFAULT_RULES = Path(__file__).with_name("default.yaml")
SEVERITIES = ("info", "low", "medium", "high", "critical")
DEFAULT_STAGES = ("ResponseComplete", "Panic")
ALL_STAGES = ("RequestReceived", "ResponseStarted", "ResponseComplete", "Panic")
RULE_KEYS = {
    "id", "title", "severity", "description", "stages", "match", "threshold", "tags", "enabled", "examples",
    "first_seen", "sequence",
}  # fmt: skip
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
    subresources: frozenset[str] | None = None  # index hint: objectref_subresource values
    codes: frozenset[int] | None = None  # index hint: responsestatus_code values
    guard: Guard | None = None  # memoized necessary condition on low-cardinality fields
    first_seen: M.FirstSeen | None = None
    sequence: M.Sequence | None = None
    kind: str = "event"  # event | threshold | first_seen | sequence | after (a sequence's A, internal)
    parent: str = ""  # for kind "after": the sequence rule's id
    lists_used: tuple[str, ...] = ()
    lists: Lists | None = field(default=None, repr=False)  # the caller lists the rule was compiled with
    inactive: str = ""  # why an enabled rule does not run (an empty caller list)

    def group_key(self, view: EventView) -> str:
        parts = []
        for get in self.group_get:
            v = get(view)
            if isinstance(v, list):
                v = ",".join(map(str, v))
            parts.append("" if v is None else str(v))
        return "|".join(parts)


# Fields whose values repeat across events (users, verbs, resources, codes, source IPs), so that a guard's answer
# for one combination of them is worth remembering. Names, URIs and objects are not among them.
GUARD_FIELDS = frozenset(
    {
        "username", "usergroups", "impersonated_username", "impersonated_groups", "verb", "stage", "level",
        "objectref_resource", "objectref_subresource", "objectref_namespace", "objectref_apigroup",
        "responsestatus_code", "decision", "useragent", "sourceip", "impersonation_constraint", "authorization_verb",
    }
)  # fmt: skip
GUARD_MEMO_MAX = 100_000


def fields_of(cond: Any) -> set[str]:
    """Every field a condition reads (keys other than all/any/not, recursively)."""
    out: set[str] = set()
    if isinstance(cond, dict):
        for k, v in cond.items():
            if k in ("all", "any"):
                for c in v if isinstance(v, list) else ():
                    out |= fields_of(c)
            elif k == "not":
                out |= fields_of(v)
            else:
                out.add(str(k))
    return out


class Guard:
    """The top-level parts of a rule's condition that read only GUARD_FIELDS: a necessary condition (the rule's
    condition is their conjunction with the rest) and a pure function of those fields' values, so RuleSet
    remembers its answer per value combination. ``rest``: the conjunction of the other parts, all that an event
    whose guard holds still has to pass (the pod rules' ``pod_spec`` tests without their resource, verb and
    subresource tests again); None when the guard is the whole condition (``complete``)."""

    __slots__ = ("pred", "fields", "rest")

    def __init__(self, pred: Predicate, fields: tuple[str, ...], rest: Predicate | None = None) -> None:
        self.pred = pred
        self.fields = fields
        self.rest = rest

    @property
    def complete(self) -> bool:
        return self.rest is None


def key_function(fields: tuple[str, ...]) -> Callable[[EventView, Any], tuple]:
    """(view, view.ev) -> the tuple of the fields' values (lists as tuples), as one generated expression: a
    generator over the fields would cost more than the memo saves."""
    parts = [
        "(x[-1] if (x := ev.get('sourceips')) else '')"  # EventView.derived('sourceip'), inline
        if f == "sourceip"
        else f"tuple(ev.get({f!r}) or ())"
        if f in LIST_FIELDS
        else f"ev.get({f!r})"
        for f in fields
        if f in GUARD_FIELDS  # known names only: this text is compiled
    ]
    return eval(f"lambda v, ev: ({', '.join(parts)},)")  # noqa: S307 - field names from a fixed set


def make_guard(match: Any, lists: Lists | None = None) -> Guard | None:
    if not isinstance(match, dict):
        return None
    parts = {k: v for k, v in match.items() if (f := fields_of({k: v})) and f <= GUARD_FIELDS}
    if not parts:
        return None
    rest = {k: v for k, v in match.items() if k not in parts}
    return Guard(compile_condition(parts, "match", lists), tuple(sorted(fields_of(parts))),
                 compile_condition(rest, "match", lists) if rest else None)  # fmt: skip


def alert_id(*parts: object) -> str:
    """Deterministic alert id: sha1 of the parts joined with '|' (see README-DEV-CONTRACTS.md)."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


def _lists_in(cond: Any) -> set[str]:
    """Names used by in_list / not_in_list anywhere in a condition."""
    out: set[str] = set()
    if isinstance(cond, dict):
        for k, v in cond.items():
            if k in ("in_list", "not_in_list") and isinstance(v, str):
                out.add(v)
            elif isinstance(v, dict | list):
                out |= _lists_in(v)
    elif isinstance(cond, list):
        for c in cond:
            out |= _lists_in(c)
    return out


def _parse_rule(raw: Any, where: str, lists: Lists | None = None) -> Rule:
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
        match = compile_condition(raw["match"], "match", lists)
    except ConditionError as exc:
        raise RuleError(f"{at}: field '{exc.where}': {exc.message}") from None
    first_seen = sequence = None
    try:
        if raw.get("first_seen") is not None:
            first_seen = M.parse_first_seen(raw["first_seen"], "first_seen")
        if raw.get("sequence") is not None:
            sequence = M.parse_sequence(raw["sequence"], "sequence", lambda c, w: compile_condition(c, w, lists))
    except M.MemoryError_ as exc:
        raise RuleError(f"{at}: field {exc}") from None
    except ConditionError as exc:
        raise RuleError(f"{at}: field '{exc.where}': {exc.message}") from None
    if sum(x is not None for x in (first_seen, sequence, raw.get("threshold"))) > 1:
        raise RuleError(f"{at}: a rule has at most one of threshold, first_seen, sequence")
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
        isinstance(v, list) and all(isinstance(e, dict) for e in v) for v in examples.values()
    ):
        raise RuleError(f"{at}: field 'examples': needs {{fire: [events], quiet: [events]}}")
    for kind_, exs in examples.items():
        for i, ex in enumerate(exs):
            if "history" in ex and (set(ex) - {"history", "event"} or not isinstance(ex.get("history"), list)
                                    or not isinstance(ex.get("event"), dict)):  # fmt: skip
                raise RuleError(f"{at}: field 'examples.{kind_}[{i}]': a history example is {{history: [events], event: {{...}}}}")
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
        subresources=equality_values(raw["match"], "objectref_subresource"),
        codes=_code_hint(raw["match"]),
        guard=make_guard(raw["match"], lists),
        first_seen=first_seen,
        sequence=sequence,
        kind="threshold" if threshold else "first_seen" if first_seen else "sequence" if sequence else "event",
        lists=lists if lists is not None else {},
        lists_used=tuple(sorted(_lists_in(raw["match"]) | _lists_in((raw.get("sequence") or {}).get("after")))),
    )


def after_rule(rule: Rule) -> Rule:
    """The internal rule that feeds a sequence its A events (indexed like any rule)."""
    seq = rule.sequence
    assert seq is not None and rule.lists is not None
    spec = seq.after_spec
    return Rule(
        id=f"{rule.id}#after", title=rule.title, severity=rule.severity, description="", stages=rule.stages,
        match=seq.after, match_spec=spec, tags=rule.tags, enabled=rule.enabled, source=rule.source,
        resources=equality_values(spec, "objectref_resource"), verbs=equality_values(spec, "verb"),
        subresources=equality_values(spec, "objectref_subresource"), codes=_code_hint(spec), guard=make_guard(spec, rule.lists),
        sequence=seq, kind="after", parent=rule.id, lists_used=rule.lists_used, inactive=rule.inactive,
    )  # fmt: skip


def _code_hint(match: Any) -> frozenset[int] | None:
    """The status codes a rule can match, when its top-level condition pins them (all as canonical ints)."""
    texts = equality_values(match, "responsestatus_code")
    if texts is None:
        return None
    ints = _int_texts(texts)
    return ints if len(ints) == len(texts) else None


def _read_doc(path: Path) -> dict[str, Any]:
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
    if set(doc) - {"rules", "lists"}:
        raise RuleError(f"rules file {path}: unknown top-level key(s) {', '.join(sorted(map(str, set(doc) - {'rules', 'lists'})))}; allowed: rules, lists")
    return doc


def file_lists(path: Path | str, examples: bool = False) -> dict[str, CidrList]:
    """The caller lists a rules file names, loaded: ``lists: {name: file}`` or ``{name: {file: f, examples:
    [cidrs]}}``; with ``examples``, the example networks stand in for the file (to check rule examples
    against lists that ship empty)."""
    path = Path(path)
    doc = _read_doc(path)
    spec = doc.get("lists") or {}
    bad = RuleError(f"rules file {path}: field 'lists': needs {{name: file}} or {{name: {{file: f, examples: [cidrs]}}}} "
                    "(paths relative to the rules file)")  # fmt: skip
    if not isinstance(spec, dict):
        raise bad
    out: dict[str, CidrList] = {}
    for name, entry in spec.items():
        if isinstance(entry, str):
            entry = {"file": entry}
        if not isinstance(name, str) or not isinstance(entry, dict) or set(entry) - {"file", "examples"} or not isinstance(entry.get("file"), str):
            raise bad
        try:
            if examples and entry.get("examples") is not None:
                ex = entry["examples"]
                if not isinstance(ex, list) or not all(isinstance(x, str) for x in ex):
                    raise bad
                out[name] = parse_list(name, "\n".join(ex), f"{path} lists.{name}.examples")
            else:
                rel = entry["file"]
                out[name] = load_list(name, (path.parent / rel) if not Path(rel).is_absolute() else Path(rel))
        except ListError as exc:
            raise RuleError(f"rules file {path}: {exc}") from None
    return out


def load_rule_file(
    path: Path | str, *, allow_disable_only: bool = False, lists: Lists | None = None
) -> tuple[list[Rule], set[str]]:
    """(rules, ids switched off) from one YAML file; RuleError names the file, rule and field. ``lists``: the
    caller lists its rules may use (default: the file's own)."""
    path = Path(path)
    doc = _read_doc(path)
    if lists is None:
        lists = file_lists(path)
    rules: list[Rule] = []
    disabled: set[str] = set()
    seen: set[str] = set()
    for i, raw in enumerate(doc["rules"]):
        where = f"rules file {path}, rule #{i + 1}"
        if allow_disable_only and isinstance(raw, dict) and set(raw) <= {"id", "enabled"} and raw.get("enabled") is False:
            disabled.add(str(raw.get("id")))
            continue
        rule = _parse_rule(raw, where, lists)
        for name in rule.lists_used:
            if name in lists and len(lists[name]) == 0:
                rule.inactive = f"caller list '{name}' is empty ({getattr(lists[name], 'path', '')})"
        if rule.id in seen:
            raise RuleError(f"{where} (rule '{rule.id}'): field 'id': duplicate id in this file")
        seen.add(rule.id)
        rules.append(rule)
    return rules, disabled


def load_rules(
    user_file: Path | str | None = None, *, include_default: bool = True, examples: bool = False
) -> list[Rule]:
    """The default set, then the user's file: same id replaces, ``{id: X, enabled: false}`` switches off.
    ``examples``: caller lists hold their example networks (for checking rule examples)."""
    rules: dict[str, Rule] = {}
    lists: dict[str, CidrList] = file_lists(DEFAULT_RULES, examples) if include_default else {}
    if user_file:
        lists.update(file_lists(user_file, examples))
    if include_default:
        for r in load_rule_file(DEFAULT_RULES, lists=lists)[0]:
            rules[r.id] = r
    if user_file:
        user, disabled = load_rule_file(user_file, allow_disable_only=True, lists=lists)
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


class _Slot:
    """The rules an event with one (resource, verb, stage, subresource, code) can match, and per combination of
    their guard fields' values, which of them remain, each with the test it must still pass (None: it matches)."""

    __slots__ = ("rules", "key", "fields", "hash_fields", "memo")

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        fields = sorted({f for r in rules if r.guard is not None for f in r.guard.fields})
        self.fields = [f for f in fields if f in GUARD_FIELDS]
        # the same names resolved once, for a native Event's values_hash (it runs per event)
        self.hash_fields = native.FieldSet(self.fields) if native.available() else self.fields
        self.key = key_function(tuple(fields)) if fields else None
        self.memo: dict[Any, list[tuple[Rule, Predicate | None]]] = {}

    def matching(self, view: EventView) -> list[Rule]:
        if not self.rules:
            return []
        return [r for r, test in self.remaining(view) if test is None or test(view)]

    def remaining(self, view: EventView) -> list[tuple[Rule, Predicate | None]]:
        if self.key is None:
            return [(r, r.match) for r in self.rules]
        ev = view.ev
        # a native Event gives a 128-bit hash of the same values (kaudit_native.Event.values_hash): no Python
        # strings to build and hash per event
        k = self.key(view, ev) if type(ev) is dict else ev.values_hash(self.hash_fields)
        found = self.memo.get(k)
        return self.learn(k, view) if found is None else found

    def learn(self, k: Any, view: EventView) -> list[tuple[Rule, Predicate | None]]:
        """Test the guards on this event and remember the answer under its memo key ``k``."""
        found = [(r, r.match if r.guard is None else r.guard.rest) for r in self.rules
                 if r.guard is None or r.guard.pred(view)]  # fmt: skip
        if len(self.memo) >= GUARD_MEMO_MAX:
            self.memo.clear()
        self.memo[k] = found
        return found


class RuleSet:
    """Enabled rules indexed by the event's (resource, verb, stage, subresource, status code), then filtered by
    their memoized guards: an event is tested only against the rules it can still match."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = []
        for r in rules:
            if r.enabled and not r.inactive:
                self.rules.append(r)
                if r.sequence is not None and r.kind == "sequence":
                    self.rules.append(after_rule(r))  # after B: an event that is both is checked as B first
        self.has_memory = any(r.kind in ("first_seen", "sequence", "after") for r in self.rules)
        self._slots: dict[tuple[str, str, str, str, int], _Slot] = {}
        self._by_hash: dict[bytes, _Slot] = {}

    def slot(self, key: tuple[str, str, str, str, int]) -> _Slot:
        """The slot of (objectref_resource, verb, stage, objectref_subresource, responsestatus_code)."""
        slot = self._slots.get(key)
        if slot is None:
            resource, verb, stage, subresource, code = key
            slot = _Slot(
                [
                    r
                    for r in self.rules
                    if stage in r.stages
                    and (r.resources is None or resource in r.resources)
                    and (r.verbs is None or verb in r.verbs)
                    and (r.subresources is None or subresource in r.subresources)
                    and (r.codes is None or code in r.codes)
                ]
            )
            if len(self._slots) >= 50_000:  # bounded: these are small sets in practice
                self._slots.clear()
            self._slots[key] = slot
        return slot

    def slot_hashed(self, h: bytes, ev: Any) -> _Slot:
        """The slot of a native Event whose rule-key hash is ``h`` (kaudit_native.rule_hashes)."""
        slot = self._by_hash.get(h)
        if slot is None:
            slot = self.slot(
                (ev["objectref_resource"], ev["verb"], ev["stage"], ev["objectref_subresource"], ev["responsestatus_code"])
            )
            if len(self._by_hash) >= 50_000:
                self._by_hash.clear()
            self._by_hash[h] = slot
        return slot

    def matches(self, view: EventView) -> list[Rule]:
        ev = view.ev
        return self.slot(
            (ev["objectref_resource"], ev["verb"], ev["stage"], ev["objectref_subresource"], ev["responsestatus_code"])
        ).matching(view)


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
    partial = dict(partial)
    ago = partial.pop("ago", None)
    ev.update(partial)
    if ago is not None:
        t = _example_time(EXAMPLE_TS) - _seconds(ago)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000000Z"
        ev["requestReceivedTimestamp"] = ev["stageTimestamp"] = text
    return ev


def _example_time(text: str) -> int:
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


def _seconds(ago: Any) -> int:
    if isinstance(ago, int | float) and not isinstance(ago, bool):
        return int(ago)
    m = re.fullmatch(r"(\d+)([smhd])", str(ago).strip())
    if not m:
        raise RuleError(f"example: 'ago' needs a number of seconds or 30s / 5m / 2h / 8d, got {ago!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def example_runs(rule: Rule, example: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(history events, checked events) of one example: a threshold rule's event is sent ``count`` times."""
    history = example.get("history") if "history" in example else []
    event = example["event"] if "history" in example else example
    hist = [example_event(h, 900_000 + k) for k, h in enumerate(history or [])]
    return hist, [example_event(event, k) for k in range(max(rule.threshold, 1))]
