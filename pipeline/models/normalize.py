"""Normalization of one audit event (a dict from any API server version) into the flat record.

This is the hot path of the worker: plain dict work, no pydantic per event. The output shape is
``pipeline.models.event.NormalizedEvent`` (tests check that every sample validates against it).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from pipeline.models.timestamps import TimestampError, _seconds, parse_ts_us
from pipeline.redaction.events import redact_event_objects
from pipeline.redaction.redact import dispatch, hash_value, ids, implied

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


def forbidden_verb(message: str) -> str:
    """The authorizer verb a Forbidden message names: ``User "<go-quoted name>" cannot <verb> ...`` (the form
    k8s.io/apiserver writes, e.g. ``impersonate-on:user-info:list``); "" when the message has no such part. The
    quoted name is skipped with its escapes, so a username cannot inject a verb."""
    at = message.find('User "')
    if at < 0:
        return ""
    i, n = at + 6, len(message)
    while i < n:
        ch = message[i]
        if ch == "\\":
            i += 2
            continue
        if ch == '"':
            break
        i += 1
    else:
        return ""
    rest = message[i + 1 :]
    if not rest.startswith(" cannot "):
        return ""
    return rest[8:].split(" ", 1)[0]


_hash_value = hash_value  # the redaction model's hash (kept under its old name)


def redact_secrets(obj: Any, is_secret_resource: bool) -> Any:
    """Redact one object by the model (``pipeline.redaction``) in place, as an object of a Secret event when
    ``is_secret_resource``; returns it. Kept for callers of the old, Secret-only function."""
    dispatch(obj, implied("", "secrets", "") if is_secret_resource else None)
    return obj


def _object_text(obj: Any, cap: int) -> tuple[str, bool]:
    if obj is None:
        return "", False
    text = orjson.dumps(obj).decode()
    if len(text) > cap:
        return text[:cap] + TRUNCATED_MARK, True
    return text, False


def _ts_us(value: Any) -> int:
    """parse_ts_us with a fast path for the MicroTime form '2023-01-27T18:28:08.129781Z' (same result)."""
    if type(value) is str and len(value) == 27 and value[26] == "Z" and value[19] == "." and value[10] == "T":
        frac = value[20:26]
        if frac.isdigit():
            try:
                return _seconds(value[:19]) * 1_000_000 + int(frac)
            except ValueError:
                pass  # let parse_ts_us decide (and word the error)
    return parse_ts_us(value)


def event_size(ev: dict[str, Any]) -> int:
    """The event's serialized size: the byte length of its compact JSON (keys in input order, UTF-8 as is),
    as the API server wrote it up to Go's escaping of <, > and &. What an audit log backend stores and bills;
    computed before redaction and truncation (volume rollups, ``kaudit volume``, ``kaudit policy suggest``)."""
    try:
        return len(orjson.dumps(ev))
    except TypeError:  # an int beyond 64 bits from the streaming decoder: the standard library can write it
        return len(json.dumps(ev, separators=(",", ":"), ensure_ascii=False, default=str).encode())


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
    get = ev.get
    audit_id = get("auditID")
    if not audit_id or not isinstance(audit_id, str):
        raise NormalizeError("missing auditID")
    stage = get("stage")
    if stage not in STAGES:
        raise NormalizeError(f"missing or unknown stage {stage!r}")

    # Timestamps: v1 MicroTime, else v1beta1 `timestamp` / `metadata.creationTimestamp` (seconds).
    received_raw = get("requestReceivedTimestamp") or get("timestamp")
    stage_raw = get("stageTimestamp")
    if not stage_raw:
        meta = get("metadata")
        stage_raw = meta.get("creationTimestamp") if isinstance(meta, dict) else None
    try:
        received = _ts_us(received_raw) if received_raw else None
        stage_ts = _ts_us(stage_raw) if stage_raw else None
    except TimestampError as exc:
        raise NormalizeError(str(exc)) from None
    if received is None and stage_ts is None:
        raise NormalizeError("no timestamp (requestReceivedTimestamp, stageTimestamp or timestamp)")
    size = event_size(ev)  # before redaction changes the objects in place
    if received is None:
        received = stage_ts
    if stage_ts is None:
        stage_ts = received

    user = get("user") or {}
    if not isinstance(user, dict):
        raise NormalizeError("user is not an object")
    imp = get("impersonatedUser") or {}
    if not isinstance(imp, dict):
        imp = {}
    ref = get("objectRef") or {}
    if not isinstance(ref, dict):
        raise NormalizeError("objectRef is not an object")
    status = get("responseStatus") or {}
    if not isinstance(status, dict):
        status = {}
    annotations = get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    elif annotations and not all(isinstance(v, str) for v in annotations.values()):
        annotations = {str(k): _str(v) if isinstance(v, str) else orjson.dumps(v).decode() for k, v in annotations.items()}

    api_group = ref.get("apiGroup")
    x = ref.get("apiVersion")
    api_version = x if type(x) is str else _str(x)
    if api_group is None and "/" in api_version:  # v1alpha1: "group/version"
        api_group, _, api_version = api_version.rpartition("/")

    extra_user = user.get("extra")
    user_extra = (
        {str(k): ",".join(_str_list(v)) for k, v in extra_user.items()} if isinstance(extra_user, dict) else {}
    )

    x = ref.get("resource")
    resource = x if type(x) is str else _str(x)
    req_obj = get("requestObject")
    resp_obj = get("responseObject")
    redacted: list[str] = []
    if req_obj is None and resp_obj is None:
        req_text = resp_text = ""
        cut1 = cut2 = False
    else:
        if redact:  # in place: the rules read these objects too
            x = ref.get("subresource")
            mask = redact_event_objects(
                req_obj, resp_obj, api_group if type(api_group) is str else _str(api_group), resource,
                x if type(x) is str else _str(x),
            )  # fmt: skip
            if mask:
                redacted = ids(mask)
        req_text, cut1 = _object_text(req_obj, max_object_bytes)
        resp_text, cut2 = _object_text(resp_obj, max_object_bytes)

    code = status.get("code")
    if type(code) is not int:
        try:
            code = int(code) if code is not None else 0
        except (TypeError, ValueError, OverflowError):  # a float's inf/nan too
            code = 0
    if not -(2**31) <= code < 2**31:  # Status.code is an int32 (the Avro int): one past it failed the whole record
        code = 0

    if ev.keys() <= KNOWN_KEYS:
        extra = ""
    else:
        extra = orjson.dumps({k: v for k, v in ev.items() if k not in KNOWN_KEYS}).decode()
    # string fields: the common case (already a str) inline, anything else through _str
    level = get("level")
    verb = get("verb")
    uri = get("requestURI")
    username = user.get("username")
    uid = user.get("uid")
    agent = get("userAgent")
    namespace = ref.get("namespace")
    name = ref.get("name")
    subresource = ref.get("subresource")
    ref_uid = ref.get("uid")
    status_status = status.get("status")
    reason = status.get("reason")
    message = status.get("message")
    version = get("apiVersion")
    # Kubernetes 1.35+: authenticationMetadata.impersonationConstraint (also kept in `extra`, whole)
    am = get("authenticationMetadata")
    constraint = am.get("impersonationConstraint") if isinstance(am, dict) else None
    return {
        "cluster": cluster,
        "auditid": audit_id,
        "stage": stage,
        "level": level if type(level) is str else _str(level),
        "verb": verb if type(verb) is str else _str(verb),
        "request_uri": uri if type(uri) is str else _str(uri),
        "username": username if type(username) is str else _str(username),
        "useruid": uid if type(uid) is str else _str(uid),
        "usergroups": _str_list(user.get("groups")),
        "user_extra": user_extra,
        "impersonated_username": _str(imp.get("username")) if imp else "",
        "impersonated_groups": _str_list(imp.get("groups")) if imp else [],
        "sourceips": _str_list(get("sourceIPs")),
        "useragent": agent if type(agent) is str else _str(agent),
        "objectref_resource": resource,
        "objectref_namespace": namespace if type(namespace) is str else _str(namespace),
        "objectref_name": name if type(name) is str else _str(name),
        "objectref_apigroup": api_group if type(api_group) is str else _str(api_group),
        "objectref_apiversion": api_version,
        "objectref_subresource": subresource if type(subresource) is str else _str(subresource),
        "objectref_uid": ref_uid if type(ref_uid) is str else _str(ref_uid),
        "responsestatus_code": code,
        "responsestatus_status": status_status if type(status_status) is str else _str(status_status),
        "responsestatus_reason": reason if type(reason) is str else _str(reason),
        "responsestatus_message": message if type(message) is str else _str(message),
        "decision": annotations.get(DECISION, ""),
        "decision_reason": annotations.get(REASON, ""),
        "annotations": annotations,
        "request_received_ts": received,
        "stage_ts": stage_ts,
        "request_object": req_text,
        "response_object": resp_text,
        "objects_truncated": cut1 or cut2,
        "event_version": version if type(version) is str else _str(version),
        "extra": extra,
        "redacted": redacted,
        "impersonation_constraint": constraint if type(constraint) is str else _str(constraint),
        "authorization_verb": forbidden_verb(message if type(message) is str else _str(message)) if code == 403 else "",
        "event_bytes": size,
    }
