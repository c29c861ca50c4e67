"""Readers for every shape audit events arrive in: JSON lines, pretty-printed or concatenated JSON
documents, EventList batches, AKS Event Hub exports, EKS CloudWatch exports, GKE Cloud Logging entries (Log
Router exports to files, Pub/Sub messages; see ``pipeline.models.gke``), with or without a BOM.

``read_events`` yields raw event dicts (not yet normalized) with the line they started on, and
``ParseIssue`` for anything that is not an event, so callers can report file:line and go on.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.models import deepjson

_decoder = json.JSONDecoder()
_WS = " \t\r\n"


@dataclass(slots=True)
class ParseIssue:
    line: int
    reason: str
    text: str = ""  # the offending text (cut), for dead-letter records


@dataclass(slots=True)
class RawEvent:
    line: int
    event: dict[str, Any]
    cluster: str = ""  # the cluster the entry itself names (GKE resource labels), "" = the record's


def _iter_documents(text: str) -> Iterator[tuple[int, Any] | ParseIssue]:
    """Yield (line, document) for JSON lines, pretty-printed and concatenated documents."""
    # Fast path: one JSON value per line (the log backend's format).
    lines = text.split("\n")
    fast_ok = True
    out: list[tuple[int, Any]] = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((i, deepjson.loads(line, check=True)))  # as deep as Go writes it, cut where too deep
        except orjson.JSONDecodeError:
            fast_ok = False
            break
    if fast_ok:
        yield from out
        return
    # Slow path: a streaming decoder that also handles documents spanning lines; on an error it
    # reports the line and resumes at the next line.
    pos, n = 0, len(text)
    line_starts = [0]
    for i, ch in enumerate(text):
        if ch == "\n":
            line_starts.append(i + 1)

    def line_of(offset: int) -> int:
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    while pos < n:
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos >= n:
            break
        try:
            doc, end = _decoder.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as exc:
            line = line_of(pos)
            nl = text.find("\n", pos)
            bad = text[pos : nl if nl >= 0 else n]
            why = f"{exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else "nested too deep"
            yield ParseIssue(line, f"invalid JSON: {why}", bad[:2000])
            pos = n if nl < 0 else nl + 1
            continue
        yield (line_of(pos), doc)
        pos = end


def _maybe_json(value: Any) -> Any:
    if isinstance(value, str | bytes):
        s = value.strip() if isinstance(value, str) else value.strip().decode("utf-8", "replace")
        if s.startswith("{"):
            try:
                return orjson.loads(s)
            except orjson.JSONDecodeError:
                return None
        return None
    return value


def unwrap(doc: Any, line: int) -> Iterator[RawEvent | ParseIssue]:
    """Turn one document of any accepted shape into audit events."""
    if isinstance(doc, list):
        for item in doc:
            yield from unwrap(item, line)
        return
    if not isinstance(doc, dict):
        yield ParseIssue(line, f"a JSON {type(doc).__name__} is not an audit event", str(doc)[:200])
        return
    if "auditID" in doc or "stage" in doc:
        yield RawEvent(line, doc)
        return
    if "protoPayload" in doc:  # GKE: a Cloud Logging LogEntry with an AuditLog
        from pipeline.models.gke import GkeError, entry_to_event

        try:
            ev, cluster = entry_to_event(doc)
        except GkeError as exc:
            yield ParseIssue(line, f"GKE log entry: {exc}", orjson.dumps(doc).decode()[:2000])
            return
        yield RawEvent(line, ev, cluster)
        return
    pubsub = _pubsub_data(doc)
    if pubsub is not None:  # a Pub/Sub message (push envelope, pulled message or a list of them)
        for item in pubsub:
            if isinstance(item, ParseIssue):
                yield ParseIssue(line, item.reason, item.text)
            else:
                yield from unwrap(item, line)
        return
    items = doc.get("items")
    if isinstance(items, list) and (doc.get("kind") in (None, "EventList")):
        for item in items:
            if isinstance(item, dict):
                yield RawEvent(line, item)
            else:
                yield ParseIssue(line, "EventList item is not an object", str(item)[:200])
        return
    records = doc.get("records")
    if isinstance(records, list):  # AKS Event Hub export
        for rec in records:
            yield from unwrap(rec, line)
        return
    props = doc.get("properties")
    if isinstance(props, dict) and "log" in props:  # AKS diagnostic record
        inner = _maybe_json(props.get("log"))
        if isinstance(inner, dict):
            yield from unwrap(inner, line)
        # klog text of other categories (or AKS "skipped-too-big-size-object"): not an audit event
        elif doc.get("category", "kube-audit") in ("kube-audit", "kube-audit-admin"):
            yield ParseIssue(line, "AKS record whose properties.log is not an audit event", str(props.get("log"))[:200])
        return
    log_events = doc.get("logEvents")
    if isinstance(log_events, list):  # EKS CloudWatch subscription payload
        for le in log_events:
            yield from unwrap(le, line)
        return
    if "message" in doc and ("logStreamName" in doc or "timestamp" in doc or "ingestionTime" in doc or "id" in doc):
        inner = _maybe_json(doc.get("message"))  # EKS CloudWatch export line
        if isinstance(inner, dict):
            yield from unwrap(inner, line)
        else:
            yield ParseIssue(line, "CloudWatch message is not an audit event", str(doc.get("message"))[:200])
        return
    if "awslogs" in doc and isinstance(doc["awslogs"], dict):  # Lambda-style base64+gzip payload
        try:
            inner = orjson.loads(gzip.decompress(base64.b64decode(doc["awslogs"]["data"])))
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad record
            yield ParseIssue(line, f"awslogs payload not decodable: {exc}")
            return
        yield from unwrap(inner, line)
        return
    yield ParseIssue(line, "JSON object is not an audit event (no auditID/stage, items or records)", str(doc)[:200])


def _pubsub_data(doc: dict[str, Any]) -> list[Any] | None:
    """The decoded ``data`` of a Pub/Sub message: a push body ``{"message": {"data": ...}, "subscription": ...}``,
    a pulled ``{"receivedMessages": [{"message": ...}]}`` or a bare message ``{"data": ..., "messageId": ...}``;
    None when the document is none of these."""
    if isinstance(doc.get("receivedMessages"), list):
        msgs = [m.get("message") if isinstance(m, dict) else None for m in doc["receivedMessages"]]
    elif isinstance(doc.get("message"), dict) and "data" in doc["message"] and "subscription" in doc:
        msgs = [doc["message"]]
    elif isinstance(doc.get("data"), str) and "messageId" in doc:
        msgs = [doc]
    else:
        return None
    out: list[Any] = []
    for m in msgs:
        try:
            out.append(orjson.loads(base64.b64decode(m["data"], validate=True)))
        except Exception as exc:  # noqa: BLE001 - any decode failure is a bad message
            out.append(ParseIssue(0, f"Pub/Sub message data is not base64 JSON: {type(exc).__name__}", str(m)[:200]))
    return out


def decode_text(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    text = data.decode("utf-8", errors="replace")
    return text[1:] if text.startswith("\ufeff") else text


def read_events(data: bytes | str) -> Iterator[RawEvent | ParseIssue]:
    """All audit events in a file body or HTTP body, in order, with ParseIssue for what is not."""
    text = decode_text(data) if isinstance(data, bytes) else data.lstrip("\ufeff")
    for item in _iter_documents(text):
        if isinstance(item, ParseIssue):
            yield item
        else:
            line, doc = item
            yield from unwrap(doc, line)
