"""Load the sample audit files straight into a warehouse, for dashboard tests, screenshots and benchmarks
(no Kafka involved): each sample folder becomes a cluster, events are deduplicated on
(cluster, auditID, stage) like the worker does, and optionally shifted so the newest event of each folder
lies just before ``now`` (so "last 24h" shows them)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.models.normalize import NormalizeError, normalize_event
from pipeline.models.readers import read_events
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS

ALERT_COLUMNS = [
    "alert_id", "rule_id", "title", "severity", "cluster", "ts", "auditid", "stage", "username", "usergroups",
    "impersonated_username", "sourceips", "useragent", "verb", "objectref_resource", "objectref_subresource",
    "objectref_namespace", "objectref_name", "objectref_apigroup", "request_uri", "responsestatus_code",
    "decision", "decision_reason", "window_start", "count", "group_key", "tags", "source_id",
]  # fmt: skip


def sample_events(root: Path, shift_to_us: int | None = None) -> list[dict[str, Any]]:
    """Normalized, deduplicated events of every ``<root>/<folder>/<file>``; cluster = folder name."""
    by_cluster: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, str]] = set()
    for path in sorted(p for p in root.glob("*/*") if p.is_file() and p.suffix != ".md"):
        cluster = path.parent.name
        for n, item in enumerate(read_events(path.read_bytes())):
            ev = getattr(item, "event", None)
            if ev is None:
                continue
            try:
                rec = normalize_event(ev, cluster)
            except NormalizeError:
                continue
            key = (cluster, rec["auditid"], rec["stage"])
            if key in seen:
                continue
            seen.add(key)
            rec["source_id"] = f"sample:{path.name}:{n}"
            by_cluster.setdefault(cluster, []).append(rec)
    out: list[dict[str, Any]] = []
    for events in by_cluster.values():
        if shift_to_us is not None:
            delta = shift_to_us - max(e["request_received_ts"] for e in events)
            for e in events:
                e["request_received_ts"] += delta
                e["stage_ts"] += delta
        out.extend(events)
    return out


def insert_events(client: Any, events: Iterable[dict[str, Any]], batch: int = 50_000) -> int:
    rows: list[list[Any]] = []
    n = 0
    for e in events:
        rows.append([e[c] for c in EVENT_INSERT_COLUMNS])
        if len(rows) >= batch:
            client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
            n += len(rows)
            rows = []
    if rows:
        client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
        n += len(rows)
    return n


def alert_for(event: dict[str, Any], rule_id: str, title: str, severity: str) -> dict[str, Any]:
    """An event-rule alert row shaped like the worker's (deterministic id sha1(rule|cluster|auditid))."""
    aid = hashlib.sha1(f"{rule_id}|{event['cluster']}|{event['auditid']}".encode()).hexdigest()
    row = {c: event.get(c) for c in ALERT_COLUMNS if c in event}
    row.update(
        alert_id=aid, rule_id=rule_id, title=title, severity=severity, ts=event["stage_ts"],
        window_start=event["request_received_ts"], count=1, group_key="", tags=[rule_id.split("-")[0]],
    )  # fmt: skip
    return row


def insert_alerts(client: Any, alerts: list[dict[str, Any]]) -> int:
    if alerts:
        client.insert("alerts", [[a[c] for c in ALERT_COLUMNS] for a in alerts], column_names=ALERT_COLUMNS)
    return len(alerts)


def demo_alerts(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few alerts over the samples (what the default rules would flag): 403s, exec/attach, secrets access."""
    out = []
    for e in events:
        if e["stage"] != "ResponseComplete":
            continue
        if e["responsestatus_code"] == 403:
            out.append(alert_for(e, "rbac-forbidden", "Request forbidden by RBAC", "medium"))
        if e["objectref_subresource"] in ("exec", "attach"):
            out.append(alert_for(e, "pod-exec-attach", "Exec or attach into a pod", "high"))
        if e["objectref_resource"] == "clusterrolebindings" and e["verb"] == "create":
            out.append(
                alert_for(e, "rbac-clusterrolebinding-create", "ClusterRoleBinding created", "critical")
            )
    return out


def now_us() -> int:
    return int(time.time() * 1_000_000)
