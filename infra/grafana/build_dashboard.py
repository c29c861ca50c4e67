"""Writes infra/grafana/kaudit.json, the Grafana dashboard: audit data from ClickHouse (the
grafana-clickhouse-datasource plugin) and kaudit's own health from Prometheus. Edit here, then run
``python infra/grafana/build_dashboard.py``; tests/test_infra_observability.py runs every ClickHouse query
against the real schema (chDB) and every PromQL expression through Prometheus's parser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CH = {"type": "grafana-clickhouse-datasource", "uid": "${DS_CLICKHOUSE}"}
PROM = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# the cluster picker: multi-select with search; "All" is the sentinel '__all' (Grafana inserts a custom allValue
# as written), not 1,000 quoted names in every query
CLUSTERS = "(has([${cluster:singlequote}], '__all') OR cluster IN (${cluster:singlequote}))"

_id = 0


def _next() -> int:
    global _id
    _id += 1
    return _id


def row(title: str, y: int) -> dict[str, Any]:
    return {"type": "row", "title": title, "id": _next(), "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}


def ch(title: str, sql: str, pos: tuple[int, int, int, int], kind: str = "timeseries", fmt: int = 0, unit: str = "short",
       desc: str = "") -> dict[str, Any]:  # fmt: skip
    """A ClickHouse panel; fmt 0 = time series, 1 = table (the plugin's format codes)."""
    x, y, w, h = pos
    return {
        "type": kind, "title": title, "id": _next(), "datasource": CH, "description": desc,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}} if kind == "timeseries" else {},
        "targets": [{"refId": "A", "datasource": CH, "editorType": "sql", "format": fmt, "queryType": "sql", "rawSql": sql}],
    }  # fmt: skip


def prom(title: str, exprs: list[tuple[str, str]], pos: tuple[int, int, int, int], unit: str = "short",
         kind: str = "timeseries", desc: str = "") -> dict[str, Any]:  # fmt: skip
    x, y, w, h = pos
    return {
        "type": kind, "title": title, "id": _next(), "datasource": PROM, "description": desc,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(65 + i), "datasource": PROM, "expr": e, "legendFormat": leg} for i, (e, leg) in enumerate(exprs)],
    }  # fmt: skip


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    panels.append(row("Audit activity (ClickHouse)", y))
    y += 1
    panels.append(ch("Events per minute by verb", f"""SELECT minute AS time, verb, sum(events) AS events
FROM events_1m WHERE $__timeFilter(minute) AND {CLUSTERS}
GROUP BY time, verb ORDER BY time""", (0, y, 12, 8), desc="From the events_1m rollup: cheap for any time range."))
    panels.append(ch("Denied and failed requests per minute", f"""SELECT minute AS time, toString(responsestatus_code) AS code, sum(events) AS events
FROM events_1m WHERE $__timeFilter(minute) AND {CLUSTERS} AND responsestatus_code >= 400
GROUP BY time, code ORDER BY time""", (12, y, 12, 8)))
    y += 8
    panels.append(ch("Alerts per hour by severity", f"""SELECT toStartOfHour(ts) AS time, severity, uniqExact(alert_id) AS alerts
FROM alerts WHERE $__timeFilter(ts) AND {CLUSTERS}
GROUP BY time, severity ORDER BY time""", (0, y, 12, 8), kind="barchart"))
    panels.append(ch("Top clusters by events", f"""SELECT cluster, sum(events) AS events
FROM events_1m WHERE $__timeFilter(minute) AND {CLUSTERS}
GROUP BY cluster ORDER BY events DESC LIMIT 20""", (12, y, 12, 8), kind="table", fmt=1))
    y += 8
    panels.append(ch("Latest alerts", f"""SELECT ts, severity, rule_id, cluster, username, verb, objectref_resource, objectref_namespace, objectref_name, alert_id
FROM alerts FINAL WHERE $__timeFilter(ts) AND {CLUSTERS}
ORDER BY ts DESC LIMIT 200""", (0, y, 24, 9), kind="table", fmt=1, desc="FINAL: one row per alert_id (ReplacingMergeTree)."))
    y += 9
    panels.append(ch("Top users by write requests", f"""SELECT username, count() AS writes, uniqExact(cluster) AS clusters
FROM audit_events WHERE $__timeFilter(request_received_ts) AND {CLUSTERS}
  AND verb IN ('create', 'update', 'patch', 'delete', 'deletecollection')
GROUP BY username ORDER BY writes DESC LIMIT 20""", (0, y, 12, 8), kind="table", fmt=1))
    panels.append(ch("Secret access by user", f"""SELECT username, verb, count() AS requests
FROM audit_events WHERE $__timeFilter(request_received_ts) AND {CLUSTERS} AND objectref_resource = 'secrets'
GROUP BY username, verb ORDER BY requests DESC LIMIT 20""", (12, y, 12, 8), kind="table", fmt=1))
    y += 8

    panels.append(row("kaudit health (Prometheus)", y))
    y += 1
    r = "$__rate_interval"
    panels.append(prom("Throughput", [
        (f"sum(rate(kaudit_bridge_events_total[{r}]))", "bridge events/s"),
        (f"sum(rate(kaudit_worker_events_total[{r}]))", "worker events/s"),
        (f"sum(rate(kaudit_sink_rows_total{{table=\"audit_events\"}}[{r}]))", "sink rows/s"),
    ], (0, y, 8, 8), unit="ops"))  # fmt: skip
    panels.append(prom("Worker lag (raw records) per partition", [
        ("sum by (partition) (kaudit_worker_consumer_lag{instance=~\"$instance\"})", "partition {{partition}}"),
    ], (8, y, 8, 8)))  # fmt: skip
    panels.append(prom("Dead letters per minute", [
        (f"sum(rate(kaudit_bridge_deadletter_items_total[{r}])) * 60", "bridge"),
        (f"sum(rate(kaudit_worker_deadletter_records_total[{r}])) * 60", "worker"),
        (f"sum(rate(kaudit_sink_deadletter_total[{r}])) * 60", "sink"),
        (f"sum(rate(kaudit_notify_deadletter_alerts_total[{r}])) * 60", "notify"),
    ], (16, y, 8, 8)))  # fmt: skip
    y += 8
    panels.append(prom("Worker group processing p50 / p99", [
        (f"histogram_quantile(0.5, sum by (le) (rate(kaudit_worker_group_seconds_bucket{{instance=~\"$instance\"}}[{r}])))", "p50"),
        (f"histogram_quantile(0.99, sum by (le) (rate(kaudit_worker_group_seconds_bucket{{instance=~\"$instance\"}}[{r}])))", "p99"),
        (f"histogram_quantile(0.99, sum by (le) (rate(kaudit_worker_ack_wait_seconds_bucket{{instance=~\"$instance\"}}[{r}])))", "Kafka ack wait p99"),
    ], (0, y, 8, 8), unit="s"))  # fmt: skip
    panels.append(prom("Worker dedup memory", [
        ("sum by (instance) (kaudit_worker_dedup_memory_bytes{instance=~\"$instance\"})", "{{instance}} dedup (est.)"),
        ("process_resident_memory_bytes{job=\"kaudit-worker\", instance=~\"$instance\"}", "{{instance}} RSS"),
    ], (8, y, 8, 8), unit="bytes"))  # fmt: skip
    panels.append(prom("Worker state rebuild time (last, per partition)", [
        ("max by (partition) (kaudit_worker_rebuild_seconds{instance=~\"$instance\"})", "partition {{partition}}"),
    ], (16, y, 8, 8), unit="s", kind="bargauge"))  # fmt: skip
    y += 8
    panels.append(prom("Bridge Kafka ack p99 and rejections", [
        (f"histogram_quantile(0.99, sum by (le) (rate(kaudit_bridge_kafka_ack_seconds_bucket[{r}])))", "ack p99 (s)"),
        (f"sum by (reason) (rate(kaudit_bridge_rejections_total[{r}]))", "rejected/s {{reason}}"),
    ], (0, y, 8, 8)))  # fmt: skip
    panels.append(prom("Sink batches and retries", [
        (f"histogram_quantile(0.99, sum by (le) (rate(kaudit_sink_batch_seconds_bucket[{r}])))", "batch write p99 (s)"),
        (f"sum by (reason) (rate(kaudit_sink_retries_total[{r}]))", "retries/s {{reason}}"),
        ("min(kaudit_sink_warehouse_up)", "warehouse up"),
    ], (8, y, 8, 8)))  # fmt: skip
    panels.append(prom("Notify: delivered, pending, destinations up", [
        (f"sum by (destination) (rate(kaudit_notify_delivered_alerts_total[{r}])) * 60", "delivered/min {{destination}}"),
        ("sum by (destination) (kaudit_notify_pending_alerts)", "pending {{destination}}"),
        ("min by (destination) (kaudit_notify_destination_up)", "up {{destination}}"),
    ], (16, y, 8, 8)))  # fmt: skip
    y += 8
    panels.append(prom("Components up", [("up{job=~\"kaudit-.*\"}", "{{job}} {{instance}}")], (0, y, 24, 5), kind="stat"))

    return {
        "__inputs": [
            {"name": "DS_CLICKHOUSE", "label": "ClickHouse (kaudit warehouse)", "type": "datasource",
             "pluginId": "grafana-clickhouse-datasource", "pluginName": "ClickHouse"},
            {"name": "DS_PROMETHEUS", "label": "Prometheus (scrapes kaudit)", "type": "datasource",
             "pluginId": "prometheus", "pluginName": "Prometheus"},
        ],  # fmt: skip
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
            {"type": "datasource", "id": "grafana-clickhouse-datasource", "name": "ClickHouse", "version": "4.0.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        ],
        "title": "kaudit: Kubernetes audit and pipeline health",
        "uid": "kaudit-overview",
        "description": "Audit activity from ClickHouse; kaudit's own health from Prometheus (infra/prometheus/prometheus.yml jobs).",
        "tags": ["kaudit", "kubernetes", "audit"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "1m",
        "templating": {"list": [
            {"name": "cluster", "label": "Cluster", "type": "query", "datasource": CH,
             "query": "SELECT DISTINCT cluster FROM events_1m WHERE minute >= now() - INTERVAL 7 DAY ORDER BY cluster",
             "definition": "SELECT DISTINCT cluster FROM events_1m WHERE minute >= now() - INTERVAL 7 DAY ORDER BY cluster",
             "multi": True, "includeAll": True, "allValue": "'__all'", "current": {"text": "All", "value": "$__all"},
             "refresh": 2, "sort": 1},
            {"name": "instance", "label": "Worker instance", "type": "query", "datasource": PROM,
             "query": {"query": "label_values(kaudit_worker_records_total, instance)", "refId": "instance"},
             "definition": "label_values(kaudit_worker_records_total, instance)", "multi": True, "includeAll": True,
             "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1},
        ]},  # fmt: skip
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("kaudit.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out}")
