"""Fields of the query language: the audit_events column names, their kinds, and accepted aliases."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from pipeline.warehouse.migrations import EVENT_COLUMNS


@dataclass(frozen=True)
class Field:
    name: str  # display name
    kind: str  # string | number | time | array | map | bool
    sql: str  # SQL expression (never user text)
    map_key: str | None = None  # annotations.<key>: the key, bound as a parameter


def _kind(ch_type: str) -> str:
    if ch_type.startswith("Array"):
        return "array"
    if ch_type.startswith("Map"):
        return "map"
    if ch_type.startswith("DateTime"):
        return "time"
    if ch_type.startswith(("UInt", "Int", "Float")):
        return "number"
    if ch_type.startswith("Bool"):
        return "bool"
    return "string"


COLUMNS: dict[str, str] = {}
LOW_CARDINALITY: set[str] = set()  # functions of these run once per dictionary value, not per row
for _line in EVENT_COLUMNS.strip().splitlines():
    _name, _type = _line.strip().rstrip(",").split(None, 1)
    COLUMNS[_name] = _kind(_type)
    if _type.startswith("LowCardinality"):
        LOW_CARDINALITY.add(_name)
COLUMNS["latency_us"] = "number"

LATENCY_SQL = "latency_us"  # migration 4: the annotation when present, else stage_ts - request_received_ts

ALIASES = {
    "user": "username", "user_username": "username", "user_name": "username",
    "user_uid": "useruid", "uid": "useruid",
    "groups": "usergroups", "user_groups": "usergroups", "group": "usergroups",
    "user_extra": "user_extra",
    "impersonated_user": "impersonated_username", "impersonateduser_username": "impersonated_username",
    "impersonateduser": "impersonated_username",
    "sourceip": "sourceips", "source_ip": "sourceips", "source_ips": "sourceips", "ip": "sourceips",
    "user_agent": "useragent",
    "resource": "objectref_resource", "namespace": "objectref_namespace", "ns": "objectref_namespace",
    "name": "objectref_name", "apigroup": "objectref_apigroup", "api_group": "objectref_apigroup",
    "apiversion": "objectref_apiversion", "subresource": "objectref_subresource",
    "objectref_apiGroup": "objectref_apigroup",
    "code": "responsestatus_code", "status": "responsestatus_code", "status_code": "responsestatus_code",
    "response_code": "responsestatus_code", "responsecode": "responsestatus_code",
    "reason": "responsestatus_reason", "message": "responsestatus_message",
    "requesturi": "request_uri", "uri": "request_uri", "url": "request_uri",
    "audit_id": "auditid", "id": "auditid",
    "timestamp": "request_received_ts", "time": "request_received_ts", "_time": "request_received_ts",
    "requestreceivedtimestamp": "request_received_ts", "stagetimestamp": "stage_ts",
    "authorization_decision": "decision", "apiversion_event": "event_version",
    "monitor_name": "cluster", "monitor": "cluster", "cluster_name": "cluster",
}  # fmt: skip
# Source scoping from the clusters file (pipeline.query.clusters): a cluster's group and its labels (key=value).
SOURCE_FIELDS = {"monitor_group": "cluster_group", "cluster_group": "cluster_group", "tags": "cluster_labels",
                 "cluster_labels": "cluster_labels", "labels": "cluster_labels"}  # fmt: skip

HIDDEN = {"request_object", "response_object", "extra"}  # queryable, not shown by default


def _canon(name: str) -> str:
    return name.replace(".", "_").replace("-", "_").lower()


def known_names() -> list[str]:
    return sorted(set(COLUMNS) | {"latency"} | set(ALIASES) | set(SOURCE_FIELDS))


def resolve(name: str) -> Field | None:
    """Field for a name as typed: column, alias, dotted camelCase (objectRef.resource), or annotations.<key>."""
    for prefix, col in (("annotations.", "annotations"), ("user_extra.", "user_extra"), ("user.extra.", "user_extra")):
        if name.lower().startswith(prefix) and len(name) > len(prefix):
            key = name[len(prefix) :]
            return Field(name, "string", col, map_key=key)
    c = _canon(name)
    if c == "latency":
        return Field("latency", "number", LATENCY_SQL)
    if c in SOURCE_FIELDS:
        kind = SOURCE_FIELDS[c]
        return Field("monitor_group" if kind == "cluster_group" else "tags", kind, "cluster")
    col = c if c in COLUMNS else ALIASES.get(c)
    if col is None:
        return None
    return Field(col, COLUMNS[col], col)


def suggest(name: str) -> str | None:
    match = difflib.get_close_matches(_canon(name), known_names(), n=1, cutoff=0.6)
    if not match:
        return None
    m = match[0]
    return ALIASES.get(m, m) if m in ALIASES and ALIASES[m] in COLUMNS else m
