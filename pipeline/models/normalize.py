"""Normalization of one audit event (a dict from any API server version) into the flat record.

This is the hot path of the worker: plain dict work, no pydantic per event. The output shape is
``pipeline.models.event.NormalizedEvent`` (tests check that every sample validates against it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from pipeline.models.timestamps import TimestampError, parse_ts_us

KNOWN_KEYS = frozenset(
    {
        "kind", "apiVersion", "level", "auditID", "stage", "requestURI", "verb", "user", "impersonatedUser",
        "sourceIPs", "userAgent", "objectRef", "responseStatus", "requestObject", "responseObject",
        "requestReceivedTimestamp", "stageTimestamp", "annotations", "timestamp", "metadata",
    }
)  # fmt: skip
STAGES = frozenset({"RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"})
DECISION = "authorization.k8s.io/decision"
REASON = "authorization.k8s.io/reason"
TRUNCATED_MARK = "…[truncated by kaudit]"


class NormalizeError(ValueError):
    """The event cannot be stored; the message says why (it goes to the dead-letter topic)."""


def _str(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _str_list(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, list):
        return [v if isinstance(v, str) else str(v) for v in value]
    return [str(value)]


def _hash_value(value: Any) -> str:
    raw = value.encode() if isinstance(value, str) else orjson.dumps(value)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


def _redact_secret(obj: dict) -> bool:
    changed = False
    for key in ("data", "stringData"):
        section = obj.get(key)
        if isinstance(section, dict) and section:
            obj[key] = {k: _hash_value(v) for k, v in section.items()}
            changed = True
    return changed


def redact_secrets(obj: Any, is_secret_resource: bool) -> Any:
    """Replace Secret data/stringData values (also inside SecretList) with a short hash, in place."""
    if not isinstance(obj, dict):
        return obj
    kind = obj.get("kind")
    if kind == "Secret" or (is_secret_resource and kind is None):
        _redact_secret(obj)
    elif kind == "SecretList" or (is_secret_resource and isinstance(obj.get("items"), list)):
        for item in obj.get("items") or ():
            if isinstance(item, dict):
                _redact_secret(item)
    return obj


def _object_text(obj: Any, cap: int) -> tuple[str, bool]:
    if obj is None:
        return "", False
    text = orjson.dumps(obj).decode()
    if len(text) > cap:
        return text[:cap] + TRUNCATED_MARK, True
    return text, False


def normalize_event(
    ev: Any,
    cluster: str,
    *,
    max_object_bytes: int = 256 * 1024,
    redact: bool = True,
) -> dict[str, Any]:
    """Flatten one audit event dict. Raises NormalizeError with a readable reason."""
    if not isinstance(ev, dict):
        raise NormalizeError(f"event is a JSON {type(ev).__name__}, not an object")
    audit_id = ev.get("auditID")
    if not audit_id or not isinstance(audit_id, str):
        raise NormalizeError("missing auditID")
    stage = ev.get("stage")
    if stage not in STAGES:
        raise NormalizeError(f"missing or unknown stage {stage!r}")

    # Timestamps: v1 MicroTime, else v1beta1 `timestamp` / `metadata.creationTimestamp` (seconds).
    meta = ev.get("metadata")
    received_raw = ev.get("requestReceivedTimestamp") or ev.get("timestamp")
    stage_raw = ev.get("stageTimestamp") or (meta.get("creationTimestamp") if isinstance(meta, dict) else None)
    try:
        received = parse_ts_us(received_raw) if received_raw else None
        stage_ts = parse_ts_us(stage_raw) if stage_raw else None
    except TimestampError as exc:
        raise NormalizeError(str(exc)) from None
    if received is None and stage_ts is None:
        raise NormalizeError("no timestamp (requestReceivedTimestamp, stageTimestamp or timestamp)")
    if received is None:
        received = stage_ts
    if stage_ts is None:
        stage_ts = received

    user = ev.get("user") or {}
    if not isinstance(user, dict):
        raise NormalizeError("user is not an object")
    imp = ev.get("impersonatedUser") or {}
    if not isinstance(imp, dict):
        imp = {}
    ref = ev.get("objectRef") or {}
    if not isinstance(ref, dict):
        raise NormalizeError("objectRef is not an object")
    status = ev.get("responseStatus") or {}
    if not isinstance(status, dict):
        status = {}
    annotations = ev.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    elif annotations and not all(isinstance(v, str) for v in annotations.values()):
        annotations = {str(k): _str(v) if isinstance(v, str) else orjson.dumps(v).decode() for k, v in annotations.items()}

    api_group = ref.get("apiGroup")
    api_version = _str(ref.get("apiVersion"))
    if api_group is None and "/" in api_version:  # v1alpha1: "group/version"
        api_group, _, api_version = api_version.rpartition("/")

    extra_user = user.get("extra")
    user_extra = (
        {str(k): ",".join(_str_list(v)) for k, v in extra_user.items()} if isinstance(extra_user, dict) else {}
    )

    resource = _str(ref.get("resource"))
    req_obj = ev.get("requestObject")
    resp_obj = ev.get("responseObject")
    if redact and (resource == "secrets" or req_obj is not None or resp_obj is not None):
        is_secret = resource == "secrets"
        req_obj = redact_secrets(req_obj, is_secret)
        resp_obj = redact_secrets(resp_obj, is_secret)
    req_text, cut1 = _object_text(req_obj, max_object_bytes)
    resp_text, cut2 = _object_text(resp_obj, max_object_bytes)

    code = status.get("code")
    try:
        code = int(code) if code is not None else 0
    except (TypeError, ValueError):
        code = 0

    unknown = {k: v for k, v in ev.items() if k not in KNOWN_KEYS}
    return {
        "cluster": cluster,
        "auditid": audit_id,
        "stage": stage,
        "level": _str(ev.get("level")),
        "verb": _str(ev.get("verb")),
        "request_uri": _str(ev.get("requestURI")),
        "username": _str(user.get("username")),
        "useruid": _str(user.get("uid")),
        "usergroups": _str_list(user.get("groups")),
        "user_extra": user_extra,
        "impersonated_username": _str(imp.get("username")),
        "impersonated_groups": _str_list(imp.get("groups")),
        "sourceips": _str_list(ev.get("sourceIPs")),
        "useragent": _str(ev.get("userAgent")),
        "objectref_resource": resource,
        "objectref_namespace": _str(ref.get("namespace")),
        "objectref_name": _str(ref.get("name")),
        "objectref_apigroup": _str(api_group),
        "objectref_apiversion": api_version,
        "objectref_subresource": _str(ref.get("subresource")),
        "objectref_uid": _str(ref.get("uid")),
        "responsestatus_code": code,
        "responsestatus_status": _str(status.get("status")),
        "responsestatus_reason": _str(status.get("reason")),
        "responsestatus_message": _str(status.get("message")),
        "decision": annotations.get(DECISION, ""),
        "decision_reason": annotations.get(REASON, ""),
        "annotations": annotations,
        "request_received_ts": received,
        "stage_ts": stage_ts,
        "request_object": req_text,
        "response_object": resp_text,
        "objects_truncated": cut1 or cut2,
        "event_version": _str(ev.get("apiVersion")),
        "extra": orjson.dumps(unknown).decode() if unknown else "",
    }
