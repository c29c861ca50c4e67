"""What a suggested RBAC grant would really give, read before anyone applies it.

The denied requests behind ``rbac suggest`` are the requester's to choose: a user who wants more can first ask
for it and be denied. Two things follow.

- **Wildcards are never granted.** The API server records a request for ``/api/v1/namespaces/x/*`` as resource
  ``*``, one for ``/apis/*/v1/...`` as API group ``*``, a non-resource ``GET /*`` as path ``/*``; in an RBAC rule
  each of these means *every* resource / group / URL. A denial whose verb, API group, resource, subresource or
  non-resource URL holds a ``*`` is left out of the suggestion and said so.
- **Grants that lead further are named.** Reading Secrets, exec into pods, minting tokens, binding or
  escalating roles, impersonation, creating workloads (which run as any service account of the namespace),
  admission webhooks, the kubelet API: the suggestion carries a warning line for each, so the person applying it
  decides with that in view (Kubernetes' "RBAC good practices" lists the same privilege-escalation paths).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.rbac.denials import Denial

WORKLOADS = frozenset({"pods", "deployments", "daemonsets", "statefulsets", "replicasets", "replicationcontrollers",
                       "jobs", "cronjobs"})  # fmt: skip
WRITE = frozenset({"create", "update", "patch"})
READ = frozenset({"get", "list", "watch"})

# (resource or resource/subresource, verbs or None = any) -> why it matters
RISKY: list[tuple[str, frozenset[str] | None, str]] = [
    ("secrets", READ, "reads Secrets: every credential stored in them (service account tokens, TLS keys, passwords)"),
    ("pods/exec", None, "runs commands inside containers (their service account tokens and mounted secrets)"),
    ("pods/attach", None, "attaches to running containers"),
    ("pods/portforward", None, "opens network connections into pods"),
    ("pods/ephemeralcontainers", WRITE, "adds containers to running pods (exec by another name)"),
    ("nodes/proxy", None, "reaches the kubelet API (exec in any pod of the node, bypassing audit of the exec)"),
    ("serviceaccounts/token", frozenset({"create"}), "mints tokens for service accounts (acts as them)"),
    ("roles", frozenset({"escalate", "bind"}), "grants permissions it does not hold (privilege escalation)"),
    ("clusterroles", frozenset({"escalate", "bind"}), "grants permissions it does not hold (privilege escalation)"),
    ("rolebindings", WRITE, "binds roles to subjects (with bind or the role's permissions: escalation)"),
    ("clusterrolebindings", WRITE, "binds cluster roles to subjects (with bind or the role's permissions: escalation)"),
    ("users", frozenset({"impersonate"}), "acts as other users"),
    ("groups", frozenset({"impersonate"}), "acts as members of other groups (system:masters is one)"),
    ("serviceaccounts", frozenset({"impersonate"}), "acts as service accounts"),
    ("uids", frozenset({"impersonate"}), "acts as other identities (by uid)"),
    ("userextras", frozenset({"impersonate"}), "sets authentication extras of other identities"),
    ("certificatesigningrequests/approval", WRITE, "approves certificate requests (client certificates for anyone)"),
    ("signers", frozenset({"approve", "sign"}), "approves or signs certificates of a signer"),
    ("mutatingwebhookconfigurations", WRITE, "intercepts and rewrites every matching API request"),
    ("validatingwebhookconfigurations", WRITE, "sees and can block every matching API request"),
    ("persistentvolumes", frozenset({"create"}), "creates volumes (hostPath: the node's file system)"),
    ("nodes", WRITE, "changes nodes (labels and taints steer workloads)"),
    ("namespaces", WRITE, "changes namespaces (pod security labels)"),
    ("tokenreviews", frozenset({"create"}), "validates tokens (an oracle for stolen ones)"),
]


def wildcard_refusal(d: Denial) -> str | None:
    """Why this denial must not become a rule (None: it can be granted literally)."""
    if d.non_resource:
        if "*" in (d.path or ""):
            return f"non-resource URL {d.path!r} holds '*', which RBAC reads as every URL with that prefix"
        if "*" in d.verb:
            return f"verb {d.verb!r} holds '*', which RBAC reads as every verb"
        return None
    for what, value in (("verb", d.verb), ("API group", d.apigroup), ("resource", d.resource),
                        ("subresource", d.subresource)):  # fmt: skip
        if "*" in value:
            return f"{what} {value!r} holds '*', which RBAC reads as every {what}"
    return None


def split_grantable(denials: Iterable[Denial]) -> tuple[list[Denial], list[tuple[Denial, str]]]:
    """(denials that can be granted literally, [(denial, why not)])."""
    ok: list[Denial] = []
    refused: list[tuple[Denial, str]] = []
    for d in denials:
        why = wildcard_refusal(d)
        if why is None:
            ok.append(d)
        else:
            refused.append((d, why))
    return ok, refused


def _verbs(rule: dict[str, Any]) -> set[str]:
    """The rule's verbs, constrained impersonation (``impersonate:<mode>``, 1.35+) read as ``impersonate``."""
    return {"impersonate" if v.startswith("impersonate:") else v for v in rule.get("verbs") or ()}


def _matches(rule: dict[str, Any], resource: str, verbs: frozenset[str] | None) -> bool:
    rule_verbs = _verbs(rule)
    hit_verbs = rule_verbs if verbs is None else rule_verbs & verbs
    return resource in (rule.get("resources") or ()) and bool(hit_verbs)


def warnings(objects: Iterable[dict[str, Any]]) -> list[str]:
    """One line per risky permission the suggested Roles/ClusterRoles hold."""
    out: list[str] = []
    for o in objects:
        if o.get("kind") not in ("Role", "ClusterRole"):
            continue
        where = f"{o['kind']} in namespace {o['metadata'].get('namespace')}" if o["kind"] == "Role" else "ClusterRole"
        for rule in o.get("rules") or ():
            names = rule.get("resourceNames")
            only = f" (only {', '.join(names)})" if names else ""
            for resource, verbs, why in RISKY:
                if _matches(rule, resource, verbs):
                    hit = sorted(_verbs(rule) if verbs is None else _verbs(rule) & verbs)
                    out.append(f"{where}: {'/'.join(hit)} {resource}{only}: {why}")
            for resource in sorted(WORKLOADS & set(rule.get("resources") or ())):
                hit = sorted(set(rule.get("verbs") or ()) & WRITE)
                if hit:
                    out.append(f"{where}: {'/'.join(hit)} {resource}{only}: runs pods as any service account of "
                               "the namespace, privileged unless Pod Security forbids it")  # fmt: skip
    return out
