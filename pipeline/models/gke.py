"""GKE audit logs: a Cloud Logging ``LogEntry`` whose ``protoPayload`` is a ``google.cloud.audit.AuditLog``
(``type.googleapis.com/google.cloud.audit.AuditLog``, serviceName ``k8s.io``), as a Log Router sink exports it
to files (one entry per line) or Pub/Sub, mapped to an audit.k8s.io/v1 event the way GKE fills the entry:

| audit event | from the LogEntry |
|---|---|
| auditID | ``operation.id`` when GKE sets it, else ``insertId`` (unique per entry; the same entry exported twice keeps it) |
| verb | the last label of ``protoPayload.methodName`` (``io.k8s.core.v1.pods.list`` -> list) |
| objectRef | ``protoPayload.resourceName`` (``{group}/{version}/namespaces/{ns}/{resource}/{name}[/{subresource}]``, ``core`` = the core group), else the labels of methodName (group labels reversed: ``io.k8s.authorization.rbac`` -> rbac.authorization.k8s.io) |
| user.username | ``authenticationInfo.principalEmail`` (else ``principalSubject``) |
| sourceIPs, userAgent | ``requestMetadata.callerIp``, ``requestMetadata.callerSuppliedUserAgent`` |
| responseStatus | ``code`` of a Kubernetes Status in ``response`` when there is one, else from ``status.code`` (google.rpc: 0 -> 200, 7 -> 403, 16 -> 401, 5 -> 404, 6 and 10 -> 409, 3 and 9 -> 400/422, 8 -> 429, 13 -> 500, ...); ``status.message`` |
| requestObject, responseObject | ``request``, ``response`` |
| annotations | ``labels`` (GKE puts the audit annotations there: authorization.k8s.io/decision, .../reason, ...) plus ``gke.kaudit.io/project``, ``/location``, ``/log-name`` |
| requestReceivedTimestamp, stageTimestamp | ``timestamp`` (both: latency is not recoverable) |
| requestURI | rebuilt from the resource (``/api/v1/namespaces/ns/pods/p``, ``/apis/apps/v1/...``); the query string is not recorded |
| cluster | ``resource.labels.cluster_name`` (over the shipper's --cluster) |

Not recoverable, and stated in the event: the stage (GKE writes one entry per finished request: recorded as
ResponseComplete), the audit level (left empty), the user's groups, uid and extra, impersonation, the exact
HTTP success code (201 shows as 200 unless the response is a Status). The entry's severity, insertId and
logName are kept in annotations (``gke.kaudit.io/*``).
"""

from __future__ import annotations

import re
from typing import Any

AUDITLOG_TYPE = "type.googleapis.com/google.cloud.audit.AuditLog"
LEGACY_GROUPS = {"apps", "batch", "autoscaling", "policy", "extensions"}  # built-in groups without a domain
_VERSION = re.compile(r"^v\d+(?:(?:alpha|beta)\d+)?$")
# google.rpc.Code -> the HTTP status Kubernetes answers with (google/rpc/code.proto's mapping)
GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 422, 10: 409, 11: 400,
                12: 501, 13: 500, 14: 503, 15: 500, 16: 401}  # fmt: skip


class GkeError(ValueError):
    """A LogEntry that is not a usable GKE audit entry; the message says why."""


def _group_from_method(labels: list[str]) -> str:
    """The reversed domain labels before the version (``io.k8s.authorization.rbac``) -> the API group."""
    if labels[:3] == ["io", "k8s", "core"] and len(labels) == 3:
        return ""
    group = ".".join(reversed(labels))
    if group.endswith(".k8s.io") and group[: -len(".k8s.io")] in LEGACY_GROUPS:
        return group[: -len(".k8s.io")]
    return group


def parse_method(method: str) -> dict[str, str]:
    """``io.k8s.<reversed group>.<version>.<resource>[.<subresource>].<verb>`` -> verb, apiGroup, apiVersion,
    resource, subresource (what can be read from it)."""
    labels = method.split(".")
    for i, lab in enumerate(labels):
        if i >= 2 and _VERSION.match(lab):
            rest = labels[i + 1 :]
            if len(rest) < 2:
                break
            return {"verb": rest[-1], "apiGroup": _group_from_method(labels[:i]), "apiVersion": lab,
                    "resource": rest[0], "subresource": rest[1] if len(rest) > 2 else ""}  # fmt: skip
    verb = labels[-1] if len(labels) > 1 else ""
    return {"verb": verb, "apiGroup": "", "apiVersion": "", "resource": "", "subresource": ""}


def parse_resource_name(name: str) -> dict[str, str] | None:
    """``core/v1/namespaces/ns/pods/web/exec`` -> apiGroup, apiVersion, namespace, resource, name, subresource."""
    parts = [p for p in name.split("/") if p != ""]
    if len(parts) < 3 or not _VERSION.match(parts[1]):
        return None
    group = "" if parts[0] == "core" else parts[0]
    rest = parts[2:]
    ns = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        ns, rest = rest[1], rest[2:]
    elif len(rest) == 2 and rest[0] == "namespaces":  # the namespace object itself: Kubernetes sets both
        return {"apiGroup": group, "apiVersion": parts[1], "namespace": rest[1], "resource": "namespaces",
                "name": rest[1], "subresource": ""}  # fmt: skip
    if not rest:
        return None
    return {"apiGroup": group, "apiVersion": parts[1], "namespace": ns, "resource": rest[0],
            "name": rest[1] if len(rest) > 1 else "", "subresource": rest[2] if len(rest) > 2 else ""}  # fmt: skip


def _request_uri(ref: dict[str, str]) -> str:
    base = f"/api/{ref['apiVersion']}" if not ref["apiGroup"] else f"/apis/{ref['apiGroup']}/{ref['apiVersion']}"
    in_ns = ref["namespace"] and ref["resource"] != "namespaces"
    path = base + (f"/namespaces/{ref['namespace']}" if in_ns else "") + f"/{ref['resource']}"
    if ref["name"]:
        path += f"/{ref['name']}"
    if ref["subresource"]:
        path += f"/{ref['subresource']}"
    return path


def _http_code(payload: dict[str, Any]) -> int:
    resp = payload.get("response")
    if isinstance(resp, dict) and resp.get("kind") == "Status" or (
        isinstance(resp, dict) and str(resp.get("@type", "")).endswith(".Status")
    ):
        code = resp.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 100 <= code < 600:
            return code
    status = payload.get("status")
    code = status.get("code", 0) if isinstance(status, dict) else 0
    if not isinstance(code, int) or isinstance(code, bool):
        code = 2
    return GRPC_TO_HTTP.get(code, 500)


def entry_to_event(entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(audit event, cluster name from the resource labels or "") of one LogEntry; GkeError if unusable."""
    payload = entry.get("protoPayload")
    if not isinstance(payload, dict):
        raise GkeError("protoPayload is not an object")
    kind = payload.get("@type")
    if kind != AUDITLOG_TYPE:
        raise GkeError(f"protoPayload is a {kind!r}, not a {AUDITLOG_TYPE}")
    service = payload.get("serviceName")
    if service not in (None, "k8s.io"):
        raise GkeError(f"serviceName {service!r} is not k8s.io (not a Kubernetes audit entry)")
    op = entry.get("operation")
    audit_id = (op.get("id") if isinstance(op, dict) else None) or entry.get("insertId")
    if not isinstance(audit_id, str) or not audit_id:
        raise GkeError("no operation.id or insertId to identify the request")
    ts = entry.get("timestamp") or entry.get("receiveTimestamp")
    if not isinstance(ts, str) or not ts:
        raise GkeError("no timestamp")
    method = payload.get("methodName")
    method = method if isinstance(method, str) else ""
    m = parse_method(method)
    rn = payload.get("resourceName")
    ref = parse_resource_name(rn) if isinstance(rn, str) else None
    if ref is None:
        ref = {"apiGroup": m["apiGroup"], "apiVersion": m["apiVersion"], "namespace": "", "resource": m["resource"],
               "name": "", "subresource": m["subresource"]}  # fmt: skip
    auth = payload.get("authenticationInfo") if isinstance(payload.get("authenticationInfo"), dict) else {}
    user = auth.get("principalEmail") or auth.get("principalSubject") or ""
    meta = payload.get("requestMetadata") if isinstance(payload.get("requestMetadata"), dict) else {}
    status = payload.get("status") if isinstance(payload.get("status"), dict) else {}
    labels = entry.get("labels") if isinstance(entry.get("labels"), dict) else {}
    res = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
    rlabels = res.get("labels") if isinstance(res.get("labels"), dict) else {}
    annotations = {str(k): v if isinstance(v, str) else str(v) for k, v in labels.items()}
    for key, value in (("project", rlabels.get("project_id")), ("location", rlabels.get("location")),
                       ("log-name", entry.get("logName")), ("severity", entry.get("severity")),
                       ("insert-id", entry.get("insertId")), ("method", method or None)):  # fmt: skip
        if value:
            annotations[f"gke.kaudit.io/{key}"] = str(value)
    annotations["gke.kaudit.io/not-recovered"] = "stage,level,groups,uid,impersonation,latency"
    ev: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "requestURI": _request_uri(ref) if ref["resource"] else (rn if isinstance(rn, str) else ""),
        "verb": m["verb"],
        "user": {"username": str(user)},
        "sourceIPs": [meta["callerIp"]] if isinstance(meta.get("callerIp"), str) and meta["callerIp"] else [],
        "userAgent": meta.get("callerSuppliedUserAgent") or "",
        "responseStatus": {"code": _http_code(payload), "message": status.get("message") or ""},
        "requestReceivedTimestamp": ts,
        "stageTimestamp": ts,
        "annotations": annotations,
    }
    if ref["resource"]:
        ev["objectRef"] = {k: v for k, v in (("resource", ref["resource"]), ("namespace", ref["namespace"]),
                                             ("name", ref["name"]), ("apiGroup", ref["apiGroup"]),
                                             ("apiVersion", ref["apiVersion"]), ("subresource", ref["subresource"])) if v}  # fmt: skip
        ev["objectRef"].setdefault("apiGroup", ref["apiGroup"])
    for src, dst in (("request", "requestObject"), ("response", "responseObject")):
        if isinstance(payload.get(src), dict):
            ev[dst] = payload[src]
    cluster = rlabels.get("cluster_name")
    return ev, cluster if isinstance(cluster, str) else ""
