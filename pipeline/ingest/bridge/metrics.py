"""Prometheus metrics of one bridge (own registry, so several bridges can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("kaudit_bridge_events", "Audit events accepted (acked by Kafka)", ["cluster"], registry=r)
        self.batches = Counter("kaudit_bridge_batches", "Webhook batches accepted", ["cluster"], registry=r)
        self.bytes = Counter("kaudit_bridge_bytes", "Decompressed body bytes accepted", ["cluster"], registry=r)
        self.deadletter = Counter(
            "kaudit_bridge_deadletter_items", "Invalid EventList items sent to the dead-letter topic", ["cluster"],
            registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "kaudit_bridge_rejections", "Requests answered with an error, by reason", ["reason"], registry=r
        )
        self.ack_latency = Histogram(
            "kaudit_bridge_kafka_ack_seconds",
            "Time from produce to Kafka acknowledgement of a batch (raw + dead-letter records)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.in_flight = Gauge("kaudit_bridge_in_flight_batches", "Batches being received or acked", registry=r)
        self.kafka_ready = Gauge("kaudit_bridge_kafka_ready", "1 while Kafka answers metadata requests", registry=r)
