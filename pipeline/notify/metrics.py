"""Prometheus metrics of one notify process (own registry, so several can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NotifyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("kaudit_notify_alerts_consumed", "Alert records read from the alerts topic", registry=r)
        self.delivered = Counter(
            "kaudit_notify_delivered_alerts", "Alerts delivered (2xx) per destination", ["destination"], registry=r
        )
        self.skipped = Counter(
            "kaudit_notify_skipped_alerts", "Alerts already delivered to a destination (replay, duplicate id)",
            ["destination"], registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "kaudit_notify_requests", "HTTP requests per destination and outcome (ok, retry, permanent)",
            ["destination", "outcome"], registry=r,
        )  # fmt: skip
        self.deadletter = Counter(
            "kaudit_notify_deadletter_alerts", "Alerts given up for a destination (a dead-letter record says why)",
            ["destination", "reason"], registry=r,
        )  # fmt: skip
        self.pending = Gauge("kaudit_notify_pending_alerts", "Alerts waiting for a destination", ["destination"], registry=r)
        self.up = Gauge(
            "kaudit_notify_destination_up", "1 while the destination's last request succeeded", ["destination"], registry=r
        )
        self.latency = Histogram(
            "kaudit_notify_request_seconds", "Time of one delivery request", ["destination"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )  # fmt: skip
        self.uncommitted = Gauge(
            "kaudit_notify_uncommitted_records", "Alert records read but not yet committed (waiting for a destination)",
            registry=r,
        )  # fmt: skip
        self.lag = Gauge("kaudit_notify_consumer_lag", "Alert records not yet read, per partition", ["partition"], registry=r)
