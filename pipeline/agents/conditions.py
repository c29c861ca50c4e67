"""Field conditions on a normalized audit event, compiled once to closures (alert rules and noise filters).

A condition is a mapping ``field: test`` (all must hold) plus the combinators ``all: [..]``, ``any: [..]``
and ``not: {..}``. A test is a scalar (equality) or a mapping of operators:

    equals, not_equals, in, not_in, startswith, endswith, contains, not_contains, regex, not_regex,
    exists (true/false), gt, gte, lt, lte, in_cidr, not_in_cidr, in_list, not_in_list,
    path_in, not_path_in, path_under, not_path_under

``path_in`` / ``path_under`` compare file paths as the kernel would name them: repeated slashes, ``.`` and a
trailing slash are dropped first (``//etc/.`` is ``/etc``); ``path_under`` also holds for anything below a listed
path. ``..`` is not resolved (a symlinked component such as /var/run makes the lexical answer wrong): test for it
with a regex.

``in_list: NAME`` tests an IP against a caller list (CIDRs from a user-maintained file named in the rules file's
``lists:`` section; see ``pipeline.agents.callers``).

Fields are the normalized names (``verb``, ``username``, ``objectref_resource``, ``responsestatus_code``, ...),
``annotations.<key>`` / ``user_extra.<key>``, the derived ``sourceip`` (the *last* source IP: the peer
the API server itself saw; the ones before it come from X-Forwarded-For / X-Real-Ip, which any client sets, so
matching on them would let one header evade every IP rule), ``request_path``
(URI without query), ``command`` (exec/attach command from the ``command=`` query parameters) and
``request_subjects`` (the usernames a RoleBinding/ClusterRoleBinding request grants: User name,
``system:serviceaccount:NS:NAME`` for a ServiceAccount, ``group:NAME`` for a Group), ``patch_unseen_paths``
(the target paths of a JSON patch's ``copy``/``move`` operations whose value the event does not carry),
``csr_common_name`` and ``csr_organizations`` (the user and groups a CertificateSigningRequest's PKCS#10 request asks
for, decoded: ``pipeline.agents.csr``), and JSON paths
into the parsed objects: ``request_object.spec.containers[*].securityContext.privileged``,
``response_object.metadata.name``, ``request_object.metadata.annotations["a.b/c"]``, and ``pod_spec.<path>``:
the pod spec a request writes, wherever its kind keeps it (a Pod's spec, the template of a Deployment,
DaemonSet, StatefulSet, ReplicaSet, ReplicationController or Job, a CronJob's job template, a PodTemplate), so
one rule covers a pod and every controller that would create it.

A JSON patch (``kubectl patch --type json``: a list of operations) is seen as the object its ``add`` and
``replace`` operations write (``/spec/template/spec/hostPID`` -> ``{"spec": {"template": {"spec": {"hostPID":
...}}}}``; list indexes and ``-`` become list elements), so rules on object paths read patches of either kind.
A ``copy`` or ``move`` whose source the patch itself wrote is followed; one whose source is the stored object
(``copy /spec/enableServiceLinks`` -> ``.../securityContext/privileged`` writes a ``true`` no event shows) names
its target in ``patch_unseen_paths``: no rule can see that value, so the rule json-patch-unseen-value alerts.

List values have "any element" semantics: a positive operator holds if it holds for some element; a negative
operator (``not_*``) holds if the positive one holds for none. A list met inside a path without ``[*]`` is
flattened too (``request_object.spec.containers.image``). String operators see numbers as text and
objects as their JSON text (so ``request_object.data: {contains: password}`` searches keys and values).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from pipeline.agents.csr import requested_subject

# Fields of pipeline.models.normalize.normalize_event
NORMALIZED_FIELDS = frozenset(
    {
        "cluster", "auditid", "stage", "level", "verb", "request_uri", "username", "useruid", "usergroups",
        "user_extra", "impersonated_username", "impersonated_groups", "sourceips", "useragent",
        "objectref_resource", "objectref_namespace", "objectref_name", "objectref_apigroup",
        "objectref_apiversion", "objectref_subresource", "objectref_uid", "responsestatus_code",
        "responsestatus_status", "responsestatus_reason", "responsestatus_message", "decision",
        "decision_reason", "annotations", "request_received_ts", "stage_ts", "objects_truncated",
        "event_version", "extra", "redacted", "impersonation_constraint", "authorization_verb",
    }
)  # fmt: skip
LIST_FIELDS = frozenset({"usergroups", "impersonated_groups", "sourceips", "redacted"})
DERIVED_FIELDS = frozenset({"sourceip", "request_path", "command", "request_subjects", "patch_unseen_paths",
                            "csr_common_name", "csr_organizations"})  # fmt: skip
OBJECT_ROOTS = {"request_object": "requestObject", "response_object": "responseObject"}
POD_SPEC_ROOT = "pod_spec"
# where each kind of object keeps the pod spec it makes (pipeline.agents.conditions.pod_spec_of)
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "pods": ("spec",),
    **{r: ("spec", "template", "spec") for r in
       ("deployments", "daemonsets", "statefulsets", "replicasets", "replicationcontrollers", "jobs")},
    "cronjobs": ("spec", "jobTemplate", "spec", "template", "spec"),
    "podtemplates": ("template", "spec"),
}  # fmt: skip
MAP_ROOTS = frozenset({"annotations", "user_extra"})

POSITIVE_OPS = ("equals", "in", "startswith", "endswith", "contains", "regex", "gt", "gte", "lt", "lte", "in_cidr",
                "in_list", "path_in", "path_under")  # fmt: skip
NEGATIVE_OPS = {
    f"not_{op}": op
    for op in ("equals", "in", "startswith", "endswith", "contains", "regex", "in_cidr", "in_list", "path_in", "path_under")
}
ALL_OPS = (*POSITIVE_OPS, *NEGATIVE_OPS, "exists")
FAST_PATHS = True  # specialised predicates for common value types (tests compare them with the general ones)


class CallerList(Protocol):
    """A named set of networks (``pipeline.agents.callers.CidrList``)."""

    def contains(self, value: Any) -> bool: ...


Lists = Mapping[str, CallerList]


class ConditionError(ValueError):
    """A condition that cannot be compiled; ``where`` names the place (e.g. ``match.verb.inn``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class Many(list):
    """Several values of one field (a list field or a path through lists): tests apply to any element."""


class EventView:
    """One event as conditions see it: the normalized dict, the raw dict (for requestObject/responseObject,
    parsed once by the reader) and lazily computed derived fields."""

    __slots__ = ("ev", "raw", "_cache")

    def __init__(self, ev: dict[str, Any], raw: dict[str, Any] | None = None) -> None:
        self.ev = ev
        self.raw = raw
        self._cache: dict[str, Any] | None = None

    def obj(self, root: str) -> Any:
        """requestObject / responseObject as parsed JSON (from the raw event, else parsed from the text once); a
        JSON patch request as the object its operations write (see module docstring)."""
        value = self.raw.get(root) if self.raw is not None else None
        if self.raw is not None and (type(value) is not list or root != "requestObject"):
            return value
        cache = self._cache if self._cache is not None else {}
        self._cache = cache
        if root not in cache:
            if self.raw is None:
                text = self.ev.get("request_object" if root == "requestObject" else "response_object") or ""
                try:
                    value = orjson.loads(text) if text else None
                except orjson.JSONDecodeError:  # truncated text: no object
                    value = None
            if type(value) is list and root == "requestObject" and self.ev.get("verb") == "patch":
                value, unseen = _apply_patch(value)
                cache["patch_unseen_paths"] = Many(unseen)
            cache[root] = value
        return cache[root]

    def pod_spec(self) -> Any:
        """The pod spec the request object carries for its resource (None: not a pod-making kind)."""
        cache = self._cache if self._cache is not None else {}
        self._cache = cache
        if POD_SPEC_ROOT not in cache:
            cache[POD_SPEC_ROOT] = pod_spec_of(self.ev.get("objectref_resource") or "", self.obj("requestObject"))
        return cache[POD_SPEC_ROOT]

    def derived(self, name: str) -> Any:
        cache = self._cache if self._cache is not None else {}
        self._cache = cache
        if name in cache:
            return cache[name]
        ev = self.ev
        if name == "sourceip":
            ips = ev.get("sourceips") or ()
            value: Any = ips[-1] if ips else ""  # the peer; earlier entries are the client's headers
        elif name == "request_path":
            value = (ev.get("request_uri") or "").partition("?")[0]
        elif name == "request_subjects":
            value = Many(_subjects(self.obj("requestObject"), ev.get("objectref_namespace") or ""))
        elif name in ("csr_common_name", "csr_organizations"):
            got = requested_subject(self.obj("requestObject")) if ev.get("objectref_resource") == "certificatesigningrequests" else None
            cache["csr_common_name"], cache["csr_organizations"] = (got[0], Many(got[1])) if got else ("", Many())
            return cache[name]
        elif name == "patch_unseen_paths":
            text = ev.get("request_object") if self.raw is None else None
            if self.raw is not None or (text and text.lstrip().startswith("[")):  # else no JSON patch: no parse
                self.obj("requestObject")  # a JSON patch's view leaves them in the cache
            return cache.setdefault(name, Many())
        else:  # command
            uri = ev.get("request_uri") or ""
            _, _, query = uri.partition("?")
            value = " ".join(parse_qs(query).get("command", [])) if "command=" in query else ""
        cache[name] = value
        return value


def pod_spec_of(resource: str, obj: Any) -> Any:
    """The pod spec inside ``obj`` for an object of ``resource`` (POD_SPEC_PATHS), else None."""
    path = POD_SPEC_PATHS.get(resource)
    if path is None:
        return None
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj if isinstance(obj, dict) else None


def _pointer_tokens(path: Any) -> list[str] | None:
    if not isinstance(path, str) or not path.startswith("/"):
        return None
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def json_patch_view(ops: list[Any]) -> Any:
    """The sparse object a JSON patch's operations write (RFC 6902), for rules to read (see ``_apply_patch``)."""
    return _apply_patch(ops)[0]


class _Implied(dict):
    """A level of the patch view made on the way to a written path: the stored object has more there."""


def _apply_patch(ops: list[Any]) -> tuple[Any, list[str]]:
    """(the sparse object a JSON patch writes, the target paths of values it writes but does not carry).

    ``add``/``replace`` write their ``value``; ``copy``/``move`` write what the patch itself wrote at ``from``
    (``move`` takes it away there), else their target is unseen: the value comes from the stored object, which
    the event does not hold. Tokens that are list indexes (or ``-``) become list elements, in index order (``-``
    last): a rule reads ``containers[*]`` whatever the index. Anything that is not a list of operations is
    returned unchanged (a merge patch of a list-valued kind, say)."""
    if not ops or not all(isinstance(o, dict) and "op" in o and "path" in o for o in ops):
        return ops, []
    root: dict[str, Any] = _Implied()
    unseen: list[str] = []
    for o in ops:
        op = o.get("op")
        if op in ("add", "replace") and "value" in o:
            value = _copy_json(o["value"])  # later operations may write inside it; the event stays as it came
        elif op in ("copy", "move"):
            found = _lookup(root, _pointer_tokens(o.get("from")))
            if found is None or isinstance(found[0], _Implied):
                unseen.append(o["path"] if isinstance(o["path"], str) else repr(o["path"]))
                if found is None:
                    continue
            value = _copy_json(found[0])
            if op == "move":
                del found[1][found[2]]
        else:
            continue
        tokens = _pointer_tokens(o.get("path"))
        if not tokens or tokens == [""]:
            if isinstance(value, dict):
                root.update(value)  # the whole document replaced
            continue
        node = root
        for tok in tokens[:-1]:
            nxt = node.get(tok)
            if not isinstance(nxt, dict):
                nxt = node[tok] = _Implied()
            node = nxt
        node[tokens[-1]] = value
    return _listify(root), unseen


def _copy_json(v: Any) -> Any:
    """A copy of a parsed JSON value's dicts and lists; anything else (strings, numbers, the orjson.Fragment of a
    value nested too deep: pipeline.models.deepjson) is immutable and shared."""
    if isinstance(v, dict):
        return {k: _copy_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy_json(x) for x in v]
    return v


def _lookup(root: dict[str, Any], tokens: list[str] | None) -> tuple[Any, Any, Any] | None:
    """(value, its parent, its key) at ``tokens`` in the patch view being built; None if the patch wrote nothing
    there (or the pointer names the whole document, which the patch never holds)."""
    if not tokens or tokens == [""]:
        return None
    node: Any = root
    for tok in tokens:
        if isinstance(node, dict) and tok in node:
            parent, key, node = node, tok, node[tok]
        elif isinstance(node, list) and tok.isdigit() and tok.isascii() and int(tok) < len(node):
            parent, key, node = node, int(tok), node[int(tok)]  # inside a list the patch wrote whole
        else:
            return None
    return node, parent, key


def _is_index(tok: str) -> bool:
    return tok == "-" or (tok.isdigit() and tok.isascii())


def _listify(node: Any) -> Any:
    """Dicts whose keys are all list indexes (or ``-``) -> lists of their values, depth first."""
    if not isinstance(node, dict):
        return node
    out = {k: _listify(v) for k, v in node.items()}  # plain dicts: what rules read is JSON
    if out and all(_is_index(k) for k in out):
        return [out[k] for k in sorted(out, key=lambda k: (k == "-", int(k) if k != "-" else 0))]
    return out


def normalize_path(text: str) -> str:
    """A path as the kernel names it, lexically: repeated slashes and ``.`` dropped, no trailing slash."""
    parts = [p for p in text.split("/") if p not in ("", ".")]
    return ("/" if text.startswith("/") else "") + "/".join(parts)


def _subjects(obj: Any, namespace: str) -> list[str]:
    """The principals a (Cluster)RoleBinding object names, as usernames (see module docstring)."""
    out: list[str] = []
    subjects = obj.get("subjects") if isinstance(obj, dict) else None
    for sub in subjects if isinstance(subjects, list) else ():
        if not isinstance(sub, dict) or not isinstance(sub.get("name"), str):
            continue
        kind = sub.get("kind")
        if kind == "ServiceAccount":
            out.append(f"system:serviceaccount:{sub.get('namespace') or namespace}:{sub['name']}")
        elif kind == "Group":
            out.append(f"group:{sub['name']}")
        else:
            out.append(sub["name"])
    return out


Accessor = Callable[[EventView], Any]
Predicate = Callable[[EventView], bool]

_PATH_TOKEN = re.compile(r'\.?([A-Za-z0-9_\-$@:/]+)|\[\*\]|\[(\d+)\]|\["([^"]*)"\]|\[\'([^\']*)\'\]')


def parse_path(path: str, where: str) -> list[tuple[str, Any]]:
    """'spec.containers[*].securityContext["x.y"]' -> [('key','spec'), ('key','containers'), ('all',None), ...]."""
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m or m.end() == pos:
            raise ConditionError(where, f"bad path {path!r} at position {pos}")
        text = m.group(0)
        if text == "[*]":
            out.append(("all", None))
        elif m.group(2) is not None:
            out.append(("index", int(m.group(2))))
        elif m.group(3) is not None or m.group(4) is not None:
            out.append(("key", m.group(3) if m.group(3) is not None else m.group(4)))
        else:
            out.append(("key", m.group(1)))
        pos = m.end()
    if not out:
        raise ConditionError(where, f"empty path {path!r}")
    return out


def _walk(root: Any, steps: list[tuple[str, Any]]) -> Many:
    values = [root]
    for kind, arg in steps:
        nxt: list[Any] = []
        for v in values:
            if kind == "key":
                if isinstance(v, dict):
                    if arg in v:
                        nxt.append(v[arg])
                elif isinstance(v, list):
                    nxt.extend(e[arg] for e in v if isinstance(e, dict) and arg in e)
            elif kind == "all":
                if isinstance(v, list):
                    nxt.extend(v)
            elif isinstance(v, list) and -len(v) <= arg < len(v):
                nxt.append(v[arg])
        values = nxt
        if not values:
            break
    # a list at the end of a path counts as its elements (rules[*].verbs: {in: ["*"]})
    flat = Many()
    for v in values:
        if isinstance(v, list):
            flat.extend(v)
        elif v is not None:
            flat.append(v)
    return flat


def accessor(field: str, where: str) -> Accessor:
    """A function event view -> value (or Many) for a field name; unknown fields are a ConditionError."""
    if field in LIST_FIELDS:
        return lambda v: Many(v.ev.get(field) or ())
    if field in NORMALIZED_FIELDS:
        return lambda v: v.ev.get(field)
    if field in DERIVED_FIELDS:
        return lambda v: v.derived(field)
    root, dot, rest = field.partition(".")
    if root in MAP_ROOTS and dot and rest:
        return lambda v: (v.ev.get(root) or {}).get(rest)
    root_b, _, _ = field.partition("[")
    root_name = root if dot else root_b
    if root_name == POD_SPEC_ROOT or root_name in OBJECT_ROOTS:
        if root_name == POD_SPEC_ROOT:
            root_of: Callable[[EventView], Any] = EventView.pod_spec
        else:
            raw_key = OBJECT_ROOTS[root_name]
            root_of = lambda v: v.obj(raw_key)  # noqa: E731
        tail = field[len(root_name) :]
        if not tail:
            return lambda v: Many([o] if (o := root_of(v)) is not None else [])
        steps = parse_path(tail.lstrip("."), where)
        return lambda v: _walk(root_of(v), steps)
    known = sorted(NORMALIZED_FIELDS | DERIVED_FIELDS)
    raise ConditionError(
        where,
        f"unknown field {field!r}; use one of {', '.join(known)}, annotations.<key>, user_extra.<key>, "
        "request_object.<path>, response_object.<path> or pod_spec.<path>",
    )


def _text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, dict | list):
        return orjson.dumps(x).decode()
    return "" if x is None else str(x)


def _strs(operand: Any, where: str, op: str) -> tuple[str, ...]:
    items = operand if isinstance(operand, list) else [operand]
    if not items or any(isinstance(i, dict | list) or i is None for i in items):
        raise ConditionError(where, f"{op} needs a string or a list of strings, got {operand!r}")
    return tuple(_text(i) for i in items)


def _scalar_pred(op: str, operand: Any, where: str, lists: Lists | None = None) -> Callable[[Any], bool]:
    """Predicate on ONE value for a positive operator."""
    if op == "in_list":
        if not isinstance(operand, str) or not operand:
            raise ConditionError(where, f"in_list needs the name of a list from the rules file's 'lists:', got {operand!r}")
        if lists is None or operand not in lists:
            known = ", ".join(sorted(lists or ())) or "none defined"
            raise ConditionError(where, f"unknown list {operand!r} (lists: {known})")
        return lists[operand].contains
    if op == "equals":
        if isinstance(operand, dict | list):
            return lambda x: x == operand
        return _in_pred([operand])
    if op == "in":
        if not isinstance(operand, list) or not operand:
            raise ConditionError(where, f"in needs a non-empty list, got {operand!r}")
        return _in_pred(operand)
    if op in ("startswith", "endswith", "contains"):
        subs = _strs(operand, where, op)
        if op == "startswith":
            return lambda x: _text(x).startswith(subs)
        if op == "endswith":
            return lambda x: _text(x).endswith(subs)
        if len(subs) == 1:
            sub = subs[0]
            return lambda x: sub in _text(x)

        def contains_any(x: Any) -> bool:
            text = _text(x)
            return any(s in text for s in subs)

        return contains_any
    if op == "regex":
        pats = _strs(operand, where, op)
        try:
            rx = re.compile(pats[0]) if len(pats) == 1 else re.compile("|".join(f"(?:{p})" for p in pats))
        except re.error as exc:
            raise ConditionError(where, f"bad regex {operand!r}: {exc} (inline flags like (?i) only in a single pattern)") from None
        return lambda x: rx.search(_text(x)) is not None
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(operand, bool) or not isinstance(operand, int | float):
            raise ConditionError(where, f"{op} needs a number, got {operand!r}")
        cmp = {
            "gt": lambda a: a > operand,
            "gte": lambda a: a >= operand,
            "lt": lambda a: a < operand,
            "lte": lambda a: a <= operand,
        }[op]

        def num(x: Any) -> bool:
            if isinstance(x, bool):
                return False
            if isinstance(x, int | float):
                return cmp(x)
            try:
                return cmp(float(x))
            except (TypeError, ValueError):
                return False

        return num
    if op in ("path_in", "path_under"):
        paths = tuple(normalize_path(p) for p in _strs(operand, where, op))
        if any(not p.startswith("/") for p in paths):
            raise ConditionError(where, f"{op} needs absolute paths, got {operand!r}")
        exact = frozenset(paths)
        if op == "path_in":
            return lambda x: isinstance(x, str) and normalize_path(x) in exact
        prefixes = tuple(p.rstrip("/") + "/" for p in paths)

        def under(x: Any) -> bool:
            if not isinstance(x, str):
                return False
            n = normalize_path(x)
            return n in exact or n.startswith(prefixes)

        return under
    if op == "in_cidr":
        try:
            nets = [ipaddress.ip_network(n, strict=False) for n in _strs(operand, where, op)]
        except ValueError as exc:
            raise ConditionError(where, f"bad network in {operand!r}: {exc}") from None

        seen: dict[str, bool] = {}  # source IPs repeat: parse each once (bounded)

        def in_net(x: Any) -> bool:
            text = _text(x)
            hit = seen.get(text)
            if hit is None:
                try:
                    ip = ipaddress.ip_address(text)
                except ValueError:
                    hit = False
                else:
                    hit = any(ip.version == n.version and ip in n for n in nets)
                if len(seen) >= 65536:
                    seen.clear()
                seen[text] = hit
            return hit

        return in_net
    raise ConditionError(where, f"unknown operator {op!r}; use one of {', '.join(ALL_OPS)}")


def _in_pred(values: list[Any]) -> Callable[[Any], bool]:
    """Membership that treats 403 and "403" alike but keeps booleans apart from numbers and text."""
    texts = {_text(v) for v in values if not isinstance(v, dict | list | bool)}
    bools = {v for v in values if isinstance(v, bool)}
    objects = [v for v in values if isinstance(v, dict | list)]

    def pred(x: Any) -> bool:
        if type(x) is str:
            return x in texts
        if isinstance(x, bool):
            return x in bools
        if isinstance(x, dict | list):
            return x in objects
        return _text(x) in texts

    return pred


def _present(x: Any) -> bool:
    return x is not None and x != "" and x != [] and x != {}


def compile_test(field: str, test: Any, where: str, lists: Lists | None = None) -> Predicate:
    """One ``field: test`` pair -> predicate on an EventView."""
    get = accessor(field, where)
    if not isinstance(test, dict):
        test = {"equals": test}
    if not test:
        raise ConditionError(where, "empty test")
    preds: list[Predicate] = []
    for op, operand in test.items():
        at = f"{where}.{op}"
        if op == "exists":
            if not isinstance(operand, bool):
                raise ConditionError(at, f"exists needs true or false, got {operand!r}")
            want = operand

            def exists(v: EventView, want: bool = want) -> bool:
                x = get(v)
                has = any(_present(e) for e in x) if isinstance(x, Many) else _present(x)
                return has is want

            if FAST_PATHS and field in NORMALIZED_FIELDS and field not in LIST_FIELDS:

                def exists_str(v: EventView, want: bool = want, general: Predicate = exists) -> bool:
                    x = v.ev.get(field)
                    if type(x) is str:
                        return (x != "") is want
                    return general(v)

                preds.append(exists_str)
            else:
                preds.append(exists)
            continue
        negate = op in NEGATIVE_OPS
        pos = NEGATIVE_OPS.get(op, op)
        sp = _scalar_pred(pos, operand, at, lists)

        def test_one(v: EventView, sp: Callable[[Any], bool] = sp, negate: bool = negate) -> bool:
            x = get(v)
            hit = any(sp(e) for e in x) if isinstance(x, Many) else (x is not None and sp(x))
            return hit is not negate

        preds.append(_fast_test(field, pos, operand, negate, test_one) or test_one)
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda v: a(v) and b(v)
    return lambda v: all(p(v) for p in preds)


def _int_texts(texts: frozenset[str] | set[str]) -> frozenset[int]:
    """The ints whose text is in ``texts`` (403 matches "403", not "0403")."""
    out = set()
    for t in texts:
        try:
            n = int(t)
        except ValueError:
            continue
        if str(n) == t:
            out.add(n)
    return frozenset(out)


def _fast_test(field: str, op: str, operand: Any, negate: bool, general: Predicate) -> Predicate | None:
    """A specialised predicate for the common cases (a normalized field holding a str, an int or a list of str,
    tested with equals/in/startswith/endswith/contains) that gives exactly ``general``'s answer; other values
    fall through to ``general``. None when there is no fast form."""
    scalar = field in NORMALIZED_FIELDS and field not in LIST_FIELDS
    if not FAST_PATHS or (not scalar and field not in LIST_FIELDS):
        return None
    if op in ("equals", "in"):
        values = [operand] if op == "equals" else operand
        if any(isinstance(x, dict | list | bool) for x in values):
            return None
        texts = frozenset(_text(x) for x in values)
        ints = _int_texts(texts)
        if scalar:

            def eq_scalar(v: EventView) -> bool:
                x = v.ev.get(field)
                t = type(x)
                if t is str:
                    return (x in texts) is not negate
                if t is int:
                    return (x in ints) is not negate
                return general(v)

            return eq_scalar

        def eq_list(v: EventView) -> bool:
            xs = v.ev.get(field)
            if type(xs) is list:
                for x in xs:
                    if type(x) is not str:
                        return general(v)
                return texts.isdisjoint(xs) is negate
            return general(v)

        return eq_list
    if op in ("startswith", "endswith") and scalar:
        subs = tuple(_text(i) for i in (operand if isinstance(operand, list) else [operand]))
        affix_test = str.startswith if op == "startswith" else str.endswith

        def affix(v: EventView) -> bool:
            x = v.ev.get(field)
            if type(x) is str:
                return affix_test(x, subs) is not negate
            return general(v)

        return affix
    return None


def _cost(key: str, value: Any) -> int:
    """Relative evaluation cost of one part of a condition, to test cheap parts of a conjunction first."""
    if key in ("all", "any"):
        return max((_cost_of(c) for c in value), default=0) if isinstance(value, list) else 9
    if key == "not":
        return _cost_of(value)
    if key in NORMALIZED_FIELDS:
        return 1 if key in LIST_FIELDS else 0
    if key == "request_subjects":
        return 5  # parses the request object
    if key in DERIVED_FIELDS or key.partition(".")[0] in MAP_ROOTS:
        return 2
    return 5  # request_object / response_object paths


def _cost_of(cond: Any) -> int:
    if not isinstance(cond, dict):
        return 9
    return max((_cost(str(k), v) for k, v in cond.items()), default=0)


def compile_condition(cond: Any, where: str, lists: Lists | None = None) -> Predicate:
    """A condition mapping (fields + all/any/not) -> predicate on an EventView."""
    if not isinstance(cond, dict) or not cond:
        raise ConditionError(where, f"a condition must be a non-empty mapping of field: test, got {cond!r}")
    parts: list[tuple[int, Predicate]] = []
    for key, value in cond.items():
        at = f"{where}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise ConditionError(at, f"{key} needs a non-empty list of conditions")
            subs = [compile_condition(c, f"{at}[{i}]", lists) for i, c in enumerate(value)]
            # conditions are pure, so their order does not change the answer: cheap ones first
            subs = [p for _, p in sorted(zip([_cost_of(c) for c in value], subs, strict=True), key=lambda cp: cp[0])]
            parts.append((_cost(str(key), value), _all_of(subs) if key == "all" else _any_of(subs)))
        elif key == "not":
            sub = compile_condition(value, at, lists)
            parts.append((_cost(str(key), value), lambda v, s=sub: not s(v)))
        else:
            parts.append((_cost(str(key), value), compile_test(str(key), value, at, lists)))
    return _all_of([p for _, p in sorted(parts, key=lambda cp: cp[0])])


def _all_of(subs: list[Predicate]) -> Predicate:
    if len(subs) == 1:
        return subs[0]
    if len(subs) == 2:
        a, b = subs
        return lambda v: a(v) and b(v)
    return lambda v: all(p(v) for p in subs)


def _any_of(subs: list[Predicate]) -> Predicate:
    if len(subs) == 1:
        return subs[0]
    if len(subs) == 2:
        a, b = subs
        return lambda v: a(v) or b(v)
    if len(subs) == 3:
        a, b, c = subs
        return lambda v: a(v) or b(v) or c(v)
    return lambda v: any(p(v) for p in subs)


def equality_values(cond: Any, field: str) -> frozenset[str] | None:
    """The values a top-level ``field`` must take for the condition to hold (for indexing rules), else None."""
    if not isinstance(cond, dict) or field not in cond:
        return None
    test = cond[field]
    if not isinstance(test, dict):
        return frozenset([_text(test)]) if not isinstance(test, list) else None
    if set(test) == {"equals"} and not isinstance(test["equals"], dict | list):
        return frozenset([_text(test["equals"])])
    if set(test) == {"in"} and isinstance(test["in"], list) and all(isinstance(x, str) for x in test["in"]):
        return frozenset(test["in"])
    return None
