"""Prometheus metrics of one worker (own registry, like the bridge's), served on KAUDIT_WORKER_METRICS_PORT.

Counters are bumped once per raw record group (not per event), and lag/dedup gauges are refreshed by the
housekeeping timer, so the hot path pays a few dictionary updates per group."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

# Bytes per remembered dedup key (see pipeline.agents.state.seen_index): native SeenKeys keep a 128-bit hash
# (~77 bytes with the index), the pure-Python SeenIndex a tuple of three strings in a dict and a deque (~340).
KEY_BYTES_NATIVE = 77
KEY_BYTES_PYTHON = 340


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        self.records = Counter("kaudit_worker_records", "Raw records processed (webhook batches, log chunks)", registry=r)
        self.events = Counter("kaudit_worker_events", "Audit events read from raw records", registry=r)
        self.kept = Counter("kaudit_worker_events_kept", "Events written to the events topic (first sightings)", registry=r)
        self.duplicates = Counter("kaudit_worker_duplicates", "Events dropped as duplicates (cluster, auditID, stage)", registry=r)
        self.dropped = Counter("kaudit_worker_events_filtered", "Events dropped by the noise filter (still counted)", registry=r)
        self.alerts = Counter("kaudit_worker_alerts", "Alerts produced", registry=r)
        self.deadletter = Counter("kaudit_worker_deadletter_records", "Dead-letter records produced", registry=r)
        self.group_seconds = Histogram(
            "kaudit_worker_group_seconds", "Time to process one raw record group (until its outputs are queued)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )  # fmt: skip
        self.ack_seconds = Histogram(
            "kaudit_worker_ack_wait_seconds", "Time from a group's outputs queued to Kafka acknowledging all of them",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )  # fmt: skip
        self.group_records = Histogram(
            "kaudit_worker_group_records", "Raw records per group", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r
        )
        self.lag = Gauge("kaudit_worker_consumer_lag", "Raw records not yet processed, per raw partition", ["partition"], registry=r)
        self.dedup_keys = Gauge("kaudit_worker_dedup_keys", "Remembered (cluster, auditID, stage) keys", ["partition"], registry=r)
        self.dedup_bytes = Gauge(
            "kaudit_worker_dedup_memory_bytes", "Estimated memory of the dedup keys (keys x bytes per key)", ["partition"],
            registry=r,
        )  # fmt: skip
        self.alert_keys = Gauge("kaudit_worker_alert_dedup_keys", "Remembered alert ids", ["partition"], registry=r)
        self.thresholds = Gauge("kaudit_worker_threshold_groups", "Open threshold counters", ["partition"], registry=r)
        self.rebuild_seconds = Gauge(
            "kaudit_worker_rebuild_seconds", "Time the last state rebuild of a partition took (after assignment)",
            ["partition"], registry=r,
        )  # fmt: skip
        self.rebuilds = Counter("kaudit_worker_rebuilds", "State rebuilds (one per partition assignment)", registry=r)
        self.rebuild_keys = Gauge(
            "kaudit_worker_rebuild_keys", "Dedup keys read back by the last rebuild of a partition", ["partition"], registry=r
        )
        self.retries = Counter(
            "kaudit_worker_retries", "Retries of work Kafka did not take: a state rebuild, or a group's outputs resent",
            ["what"], registry=r,
        )  # fmt: skip
        self.refused = Counter(
            "kaudit_worker_outputs_refused", "Raw records whose outputs Kafka refused for good (dead-lettered instead)",
            registry=r,
        )  # fmt: skip
        self.partitions = Gauge("kaudit_worker_partitions", "Raw partitions with state in this worker", registry=r)
        self.last_processed = Gauge(
            "kaudit_worker_last_processed_timestamp_seconds", "Wall time the last group was acknowledged", registry=r
        )

    def count_group(self, before: dict[str, int], after: dict[str, int], deadletters: int) -> None:
        """Counters from the worker's running totals (the difference one group made)."""
        for name, counter in (("records", self.records), ("events", self.events), ("kept", self.kept),
                              ("duplicates", self.duplicates), ("dropped", self.dropped), ("alerts", self.alerts)):  # fmt: skip
            d = after[name] - before[name]
            if d:
                counter.inc(d)
        if deadletters:
            self.deadletter.inc(deadletters)

    def set_state(self, partition: int, state: Any, compact: bool) -> None:
        p = str(partition)
        keys = len(state.seen)
        self.dedup_keys.labels(p).set(keys)
        native = type(state.seen).__name__ != "SeenIndex" and compact
        self.dedup_bytes.labels(p).set(keys * (KEY_BYTES_NATIVE if native else KEY_BYTES_PYTHON))
        self.alert_keys.labels(p).set(len(state.alerts))
        self.thresholds.labels(p).set(len(state.thresholds))

    def forget(self, partition: int) -> None:
        p = str(partition)
        for g in (self.lag, self.dedup_keys, self.dedup_bytes, self.alert_keys, self.thresholds):
            try:
                g.remove(p)
            except KeyError:
                pass
