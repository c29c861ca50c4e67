"""The smallest RBAC objects that allow exactly a set of denied requests (in the spirit of audit2rbac).

- Requests in a namespace -> one Role + RoleBinding per namespace.
- Requests without a namespace (cluster-scoped resources, cross-namespace lists) and non-resource URLs ->
  one ClusterRole + ClusterRoleBinding.
- Subresources are written ``resource/subresource``. ``resourceNames`` are used for a (resource, verb) when
  every denial of it named an object and the verb can be restricted by name (not create, list, watch,
  deletecollection: the authorizer does not see a name for those).
- Rules are merged only where the merge grants nothing more: one API group per rule, resources merged when
  they have the same verbs and names, verbs merged when they have the same names.
- Denials naming a wildcard are left out, and risky grants are named in the header (pipeline/rbac/risk.py).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import yaml

from pipeline.rbac.denials import Denial
from pipeline.rbac.risk import split_grantable

RBAC_API = "rbac.authorization.k8s.io/v1"
RBAC_GROUP = "rbac.authorization.k8s.io"
UNNAMED_VERBS = frozenset({"create", "list", "watch", "deletecollection"})
SA_PREFIX = "system:serviceaccount:"


def subject_for(user: str) -> dict[str, str]:
    """``system:serviceaccount:NS:NAME`` -> ServiceAccount subject, anything else -> User."""
    if user.startswith(SA_PREFIX):
        rest = user[len(SA_PREFIX) :]
        ns, _, name = rest.partition(":")
        if ns and name:
            return {"kind": "ServiceAccount", "name": name, "namespace": ns}
    return {"kind": "User", "apiGroup": RBAC_GROUP, "name": user}


def role_name(user: str) -> str:
    """A valid role name derived from the user (no '/' or '%'; at most 253 characters)."""
    safe = re.sub(r"[^a-zA-Z0-9:._-]", "-", user)
    return f"kaudit:{safe}"[:253]


def _resource_rules(denials: Iterable[Denial]) -> list[dict[str, Any]]:
    # (group, resource) -> verb -> names (None = any name)
    by_res: dict[tuple[str, str], dict[str, set[str] | None]] = defaultdict(dict)
    seen: dict[tuple[str, str, str], list[Denial]] = defaultdict(list)
    for d in denials:
        seen[(d.apigroup, d.rbac_resource, d.verb)].append(d)
    for (group, res, verb), ds in seen.items():
        # impersonate-on:<mode>:<verb> is restricted by name like <verb> is
        named = verb.rsplit(":", 1)[-1] not in UNNAMED_VERBS and all(d.name for d in ds)
        by_res[(group, res)][verb] = {d.name for d in ds} if named else None
    # (group, resource, names) -> verbs
    verbs_of: dict[tuple[str, str, frozenset[str] | None], set[str]] = defaultdict(set)
    for (group, res), verbs in by_res.items():
        for verb, names in verbs.items():
            verbs_of[(group, res, frozenset(names) if names is not None else None)].add(verb)
    # (group, verbs, names) -> resources
    merged: dict[tuple[str, frozenset[str], frozenset[str] | None], set[str]] = defaultdict(set)
    for (group, res, names), verbs in verbs_of.items():
        merged[(group, frozenset(verbs), names)].add(res)
    rules = []
    for (group, verbs, names), resources in merged.items():
        rule: dict[str, Any] = {"apiGroups": [group], "resources": sorted(resources)}
        if names is not None:
            rule["resourceNames"] = sorted(names)
        rule["verbs"] = sorted(verbs)
        rules.append(rule)
    return sorted(
        rules, key=lambda r: (r["apiGroups"], r["resources"], r["verbs"], r.get("resourceNames", []))
    )


def _non_resource_rules(denials: Iterable[Denial]) -> list[dict[str, Any]]:
    verbs_of: dict[str, set[str]] = defaultdict(set)
    for d in denials:
        verbs_of[d.path or "/"].add(d.verb)
    merged: dict[frozenset[str], set[str]] = defaultdict(set)
    for path, verbs in verbs_of.items():
        merged[frozenset(verbs)].add(path)
    return sorted(
        ({"nonResourceURLs": sorted(paths), "verbs": sorted(verbs)} for verbs, paths in merged.items()),
        key=lambda r: (r["nonResourceURLs"], r["verbs"]),
    )


def suggest(denials: Iterable[Denial], user: str, name: str | None = None) -> list[dict[str, Any]]:
    """Kubernetes objects (dicts) granting exactly the denied requests to ``user``; a denial that names a
    wildcard is never granted (pipeline.rbac.risk: RBAC would read it as everything)."""
    denials, _ = split_grantable(denials)
    name = name or role_name(user)
    subject = subject_for(user)
    annotations = {"kaudit.io/generated-for": user}
    by_ns: dict[str, list[Denial]] = defaultdict(list)
    cluster_res: list[Denial] = []
    non_res: list[Denial] = []
    for d in denials:
        if d.non_resource:
            non_res.append(d)
        elif d.namespace:
            by_ns[d.namespace].append(d)
        else:
            cluster_res.append(d)
    objects: list[dict[str, Any]] = []
    if cluster_res or non_res:
        rules = _resource_rules(cluster_res) + _non_resource_rules(non_res)
        meta = {"name": name, "annotations": annotations}
        objects.append({"apiVersion": RBAC_API, "kind": "ClusterRole", "metadata": meta, "rules": rules})
        objects.append(
            {
                "apiVersion": RBAC_API,
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name, "annotations": annotations},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
                "subjects": [subject],
            }
        )
    for ns in sorted(by_ns):
        meta = {"name": name, "namespace": ns, "annotations": annotations}
        objects.append(
            {"apiVersion": RBAC_API, "kind": "Role", "metadata": meta, "rules": _resource_rules(by_ns[ns])}
        )
        objects.append(
            {
                "apiVersion": RBAC_API,
                "kind": "RoleBinding",
                "metadata": {"name": name, "namespace": ns, "annotations": annotations},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name},
                "subjects": [subject],
            }
        )
    return objects


def to_yaml(objects: list[dict[str, Any]], header: str = "") -> str:
    """Multi-document YAML (``kubectl apply -f`` accepts it); an optional ``#`` comment header."""
    body = "---\n".join(yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objects)
    head = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return head + ("---\n" + body if body else "")
