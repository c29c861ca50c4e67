"""The RBAC a subject already has, so that ``rbac suggest --existing`` proposes only what is missing.

Input: the objects of ``kubectl get roles,rolebindings,clusterroles,clusterrolebindings -A -o yaml`` (a ``List``,
single objects, or several YAML/JSON documents), or the same read from the API server (``--from-cluster``, via
``kubectl`` and a kubeconfig: kubectl already speaks every kubeconfig auth method, exec plugins included).

Matching follows the Kubernetes RBAC authorizer (k8s.io/kubernetes pkg/apis/rbac/v1/evaluation_helpers.go):
``*`` in verbs, apiGroups and resources; ``*/subresource``; resourceNames (empty = any); nonResourceURLs with a
trailing ``*``; RoleBindings apply in their namespace, ClusterRoleBindings everywhere; subjects are Users,
Groups (the groups the audit events recorded for the user) and ServiceAccounts (also through the implicit
``system:serviceaccounts`` / ``system:serviceaccounts:<ns>`` groups). Aggregated ClusterRoles are read with the
rules the aggregation controller wrote into them.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.rbac.denials import Denial

KINDS = ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
SA_PREFIX = "system:serviceaccount:"


class RbacInputError(ValueError):
    """RBAC objects that cannot be read; the message names the file or the command."""


@dataclass
class Existing:
    """Roles and bindings by name: role key (kind, namespace, name) -> rules; bindings as they are."""

    roles: dict[tuple[str, str, str], list[dict[str, Any]]]
    bindings: list[dict[str, Any]]

    @classmethod
    def from_objects(cls, objects: Iterable[Any]) -> Existing:
        roles: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        bindings: list[dict[str, Any]] = []
        for o in _flatten(objects):
            kind = o.get("kind")
            meta = o.get("metadata") or {}
            if kind in ("Role", "ClusterRole"):
                ns = meta.get("namespace", "") if kind == "Role" else ""
                roles[(kind, ns or "", str(meta.get("name", "")))] = [r for r in o.get("rules") or [] if isinstance(r, dict)]
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                bindings.append(o)
        return cls(roles, bindings)

    def granted_by(self, user: str, groups: Iterable[str], d: Denial) -> str | None:
        """The binding (``Kind/namespace/name``) whose role allows the request ``d`` of ``user``, else None."""
        who = _identities(user, groups)
        for b in self.bindings:
            kind = b["kind"]
            meta = b.get("metadata") or {}
            bns = meta.get("namespace", "") or ""
            if kind == "RoleBinding" and (d.non_resource or bns != d.namespace):
                continue  # a RoleBinding grants only inside its namespace (never non-resource URLs)
            if not any(_subject(s, bns) in who for s in b.get("subjects") or [] if isinstance(s, dict)):
                continue
            ref = b.get("roleRef") or {}
            rkind = ref.get("kind")
            rules = self.roles.get((rkind, bns if rkind == "Role" else "", str(ref.get("name", ""))), [])
            if any(rule_allows(r, d) for r in rules):
                return f"{kind}/{bns + '/' if bns else ''}{meta.get('name', '')}"
        return None


def _flatten(objects: Iterable[Any]) -> Iterable[dict[str, Any]]:
    for o in objects:
        if not isinstance(o, dict):
            continue
        if o.get("kind", "").endswith("List") and isinstance(o.get("items"), list):
            yield from _flatten(o["items"])
        elif o.get("kind") in KINDS:
            yield o


def _identities(user: str, groups: Iterable[str]) -> set[str]:
    out = {f"user:{user}"} | {f"group:{g}" for g in groups}
    if user.startswith(SA_PREFIX):
        ns = user[len(SA_PREFIX):].partition(":")[0]
        out |= {"group:system:serviceaccounts", f"group:system:serviceaccounts:{ns}", "group:system:authenticated"}
    return out


def _subject(s: dict[str, Any], binding_ns: str) -> str:
    kind, name = s.get("kind"), str(s.get("name", ""))
    if kind == "ServiceAccount":
        return f"user:{SA_PREFIX}{s.get('namespace') or binding_ns}:{name}"
    if kind == "Group":
        return f"group:{name}"
    return f"user:{name}"


def rule_allows(rule: dict[str, Any], d: Denial) -> bool:
    verbs = rule.get("verbs") or []
    if "*" not in verbs and d.verb not in verbs:
        return False
    if d.non_resource:
        for url in rule.get("nonResourceURLs") or []:
            if url == "*" or url == d.path or (url.endswith("*") and d.path.startswith(url[:-1])):
                return True
        return False
    groups = rule.get("apiGroups")
    if groups is None or ("*" not in groups and d.apigroup not in groups):
        return False
    combined = d.rbac_resource
    ok = False
    for res in rule.get("resources") or []:
        if res == "*" or res == combined or (d.subresource and res == f"*/{d.subresource}"):
            ok = True
            break
    if not ok:
        return False
    names = rule.get("resourceNames") or []
    return not names or d.name in names


def load_files(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Every RBAC object in the files (YAML or JSON, one or many documents, Lists)."""
    out: list[dict[str, Any]] = []
    for p in paths:
        path = Path(p)
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except OSError as exc:
            raise RbacInputError(f"--existing {path}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise RbacInputError(f"--existing {path}: not YAML or JSON: {exc}") from None
        objs = list(_flatten(docs))
        if not objs and any(d for d in docs):
            raise RbacInputError(f"--existing {path}: no Role, ClusterRole, RoleBinding or ClusterRoleBinding in it")
        out += objs
    return out


def load_from_cluster(kubeconfig: str | None = None, context: str | None = None, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """The cluster's roles and bindings, read with kubectl (needs list on the four RBAC resources)."""
    cmd = [kubectl]
    if kubeconfig:
        cmd += ["--kubeconfig", kubeconfig]
    if context:
        cmd += ["--context", context]
    cmd += ["get", "roles,rolebindings,clusterroles,clusterrolebindings", "--all-namespaces", "-o", "json"]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RbacInputError(f"--from-cluster: cannot run {kubectl}: {exc}") from None
    if proc.returncode != 0:
        raise RbacInputError(f"--from-cluster: {' '.join(cmd[:1] + cmd[-6:])} failed: {proc.stderr.decode(errors='replace').strip()[:500]}")
    try:
        return list(_flatten([json.loads(proc.stdout)]))
    except ValueError as exc:
        raise RbacInputError(f"--from-cluster: kubectl did not print JSON: {exc}") from None


def missing(denials: Iterable[Denial], existing: Existing, user: str, groups: Iterable[str]) -> tuple[list[Denial], list[tuple[Denial, str]]]:
    """(denials the existing RBAC does not allow, [(denial, granting binding)] for those it already allows)."""
    groups = list(groups)
    todo, covered = [], []
    for d in denials:
        by = existing.granted_by(user, groups, d)
        if by is None:
            todo.append(d)
        else:
            covered.append((d, by))
    return todo, covered
