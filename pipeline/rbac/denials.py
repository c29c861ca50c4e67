"""The denied requests (HTTP 403) of one user or service account, read from ``audit_events``.

RBAC is evaluated for the effective user: the impersonated user when the request impersonated someone,
else the authenticated user. One request is one ``auditid`` (a request logged at several stages counts once).

A denied impersonation is a check on other attributes than the request's: ``impersonate`` (legacy) or
``impersonate:<mode>`` on the impersonated identity (users/groups/serviceaccounts/nodes ... with its name), or
``impersonate-on:<mode>:<verb>`` on the request's resource (Kubernetes 1.35+ constrained impersonation). The
Forbidden message names exactly those attributes (``User "x" cannot <verb> resource "<r>" in API group "<g>"
...``), so such denials are read from it: what ``suggest`` must allow is the impersonation, not the request.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.web.timerange import TimeRange

DENIED_CODE = 403

# One row per distinct request shape; names and paths are kept so that `suggest` can use resourceNames
# and nonResourceURLs.
DENIALS_SQL = """
SELECT verb, objectref_apigroup AS apigroup, objectref_resource AS resource,
       objectref_subresource AS subresource, objectref_namespace AS namespace, objectref_name AS name,
       if(objectref_resource = '', splitByChar('?', request_uri)[1], '') AS path,
       uniqExact(auditid) AS requests,
       toUnixTimestamp64Micro(min(request_received_ts)) AS first_us,
       toUnixTimestamp64Micro(max(request_received_ts)) AS last_us,
       anyLast(decision_reason) AS reason,
       anyLast(responsestatus_message) AS message,
       groupUniqArray(5)(cluster) AS clusters,
       groupUniqArrayArray(64)(if(impersonated_username != '', impersonated_groups, usergroups)) AS user_groups,
       authorization_verb AS authz_verb,
       if(startsWith(authorization_verb, 'impersonate'), responsestatus_message, '') AS impersonation_message
FROM audit_events
WHERE responsestatus_code = {code:UInt16}
  AND if(impersonated_username != '', impersonated_username, username) = {user:String}
  AND request_received_ts >= fromUnixTimestamp64Micro({t0:Int64}, 'UTC')
  AND request_received_ts < fromUnixTimestamp64Micro({t1:Int64}, 'UTC')
  {cluster_pred}
GROUP BY verb, apigroup, resource, subresource, namespace, name, path, authz_verb, impersonation_message
ORDER BY requests DESC, verb, apigroup, resource, subresource, namespace, name, path, authz_verb, impersonation_message
LIMIT 10000
"""


@dataclass(frozen=True)
class Denial:
    """One distinct denied request shape (the attributes the RBAC authorizer sees)."""

    verb: str
    apigroup: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""  # non-resource requests only (objectRef absent)
    requests: int = 1
    first_us: int = 0
    last_us: int = 0
    reason: str = ""
    message: str = ""
    clusters: tuple[str, ...] = ()
    authz_verb: str = ""  # the verb the Forbidden message names (audit_events.authorization_verb)
    user_groups: tuple[str, ...] = ()  # the groups the events recorded for the user (for --existing)

    @property
    def non_resource(self) -> bool:
        return not self.resource

    @property
    def rbac_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


# the message of k8s.io/apiserver's ForbiddenStatusError (responsewriters.forbiddenMessage inside NewForbidden)
_FORBIDDEN = re.compile(
    r'^(?:\S+ (?:"(?P<name>(?:[^"\\]|\\.)*)" )?is forbidden: |forbidden: )User "(?:[^"\\]|\\.)*" cannot (?P<verb>\S+) '
    r'(?:resource "(?P<res>[^"]*)" in API group "(?P<group>[^"]*)"(?: in the namespace "(?P<ns>[^"]*)"| at the cluster scope)'
    r'|path "(?P<path>[^"]*)")'
)


def forbidden_attributes(message: str) -> dict[str, str] | None:
    """The authorizer attributes a Forbidden message names: verb, resource, subresource, apigroup, namespace,
    name, path; None if the message is not in that form."""
    m = _FORBIDDEN.match(message or "")
    if m is None:
        return None
    res, _, sub = (m.group("res") or "").partition("/")
    name = (m.group("name") or "").replace('\\"', '"').replace("\\\\", "\\")
    return {"verb": m.group("verb"), "resource": res, "subresource": sub, "apigroup": m.group("group") or "",
            "namespace": m.group("ns") or "", "name": name, "path": m.group("path") or ""}  # fmt: skip


def authorizer_view(d: Denial) -> Denial:
    """A denied impersonation as the check that failed (see the module docstring); other denials unchanged."""
    if not d.authz_verb.startswith("impersonate"):
        return d
    a = forbidden_attributes(d.message)
    if a is None or a["verb"] != d.authz_verb:
        return d
    return replace(d, verb=a["verb"], apigroup=a["apigroup"], resource=a["resource"], subresource=a["subresource"],
                   namespace=a["namespace"], name=a["name"], path=a["path"])  # fmt: skip


def denials_query(
    user: str, tr: TimeRange, clusters: Iterable[str] = (), allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any]]:
    """``clusters``: the requested ones (empty = all); ``allowed``: the reader's (None = all, empty = none),
    a predicate of its own so a request can only narrow it."""
    params: dict[str, Any] = {"code": DENIED_CODE, "user": user, **tr.params()}
    cl = [c for c in clusters if c]
    pred = ""
    if cl:
        pred = "AND cluster IN {clusters:Array(String)}"
        params["clusters"] = cl
    if allowed is not None:
        if allowed:
            pred += " AND cluster IN {allowed:Array(String)}"
            params["allowed"] = sorted(set(allowed))
        else:
            pred += " AND 0"
    return DENIALS_SQL.replace("{cluster_pred}", pred), params


def denials_from_rows(cols: list[str], rows: list[list[Any]]) -> list[Denial]:
    out = []
    for r in rows:
        d = dict(zip(cols, r, strict=False))
        out.append(authorizer_view(
            Denial(
                verb=d["verb"],
                apigroup=d["apigroup"],
                resource=d["resource"],
                subresource=d["subresource"],
                namespace=d["namespace"],
                name=d["name"],
                path=d["path"] or "",
                requests=int(d["requests"]),
                first_us=int(d["first_us"]),
                last_us=int(d["last_us"]),
                reason=d["reason"] or "",
                message=d["message"] or "",
                clusters=tuple(sorted(d["clusters"] or ())),
                authz_verb=d.get("authz_verb") or "",
                user_groups=tuple(sorted(d.get("user_groups") or ())),
            )
        ))
    return out


@dataclass
class ExplainGroup:
    """Denials grouped by (verb, API group, resource, subresource, namespace) for `rbac explain`."""

    verb: str
    apigroup: str
    resource: str
    subresource: str
    namespace: str
    requests: int = 0
    first_us: int = 0
    last_us: int = 0
    reason: str = ""
    names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def explain(denials: Iterable[Denial]) -> list[ExplainGroup]:
    groups: dict[tuple[str, ...], ExplainGroup] = {}
    for d in denials:
        key = (d.verb, d.apigroup, d.resource, d.subresource, d.namespace)
        g = groups.get(key)
        if g is None:
            g = groups[key] = ExplainGroup(*key, first_us=d.first_us, last_us=d.last_us)
        g.requests += d.requests
        g.first_us = min(g.first_us, d.first_us)
        if d.last_us >= g.last_us:
            g.last_us = d.last_us
            g.reason = d.reason or d.message or g.reason
        elif not g.reason:
            g.reason = d.reason or d.message
        if d.name and d.name not in g.names:
            g.names.append(d.name)
        if d.path and d.path not in g.paths:
            g.paths.append(d.path)
        for c in d.clusters:
            if c not in g.clusters:
                g.clusters.append(c)
    return sorted(groups.values(), key=lambda g: (-g.requests, g.namespace, g.resource, g.verb))
