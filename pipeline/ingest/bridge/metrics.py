"""Prometheus metrics of one bridge (own registry, so several bridges can live in one test process).

Per-cluster series are held to a cardinality budget (``Settings.metrics_max_clusters``, ``ClusterLabels``): the
first N clusters seen since start keep their own ``cluster`` label, later ones share ``cluster="_other"``, so a
fleet of thousands of clusters costs Prometheus at most N+1 series per metric and ``sum()`` stays exact."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("kaudit.bridge.metrics")

OTHER = "_other"  # cannot collide with a cluster: names start with [a-z0-9] (auth.CLUSTER_RE)
DEFAULT_MAX_CLUSTERS = 200


class ClusterLabels:
    """The label value a cluster is counted under: its own name for the first ``limit`` distinct clusters, then
    ``_other``. First come rather than top-N by volume, because a Prometheus counter must only grow: a cluster that
    moved from ``_other`` to its own series would make ``_other`` fall (read as a counter reset by rate()), and
    the named set would churn. Memory is bounded by ``limit`` names; an unnamed cluster is not remembered."""

    __slots__ = ("limit", "_named", "_warned")

    def __init__(self, limit: int = DEFAULT_MAX_CLUSTERS) -> None:
        self.limit = max(0, int(limit))
        self._named: set[str] = set()
        self._warned = False

    def __call__(self, cluster: str) -> str:
        if cluster in self._named:
            return cluster
        if len(self._named) < self.limit:
            self._named.add(cluster)
            return cluster
        if not self._warned:
            self._warned = True
            log.warning("metrics: %d clusters have their own series (KAUDIT_METRICS_MAX_CLUSTERS); further clusters "
                        "are counted under cluster=%r", self.limit, OTHER)  # fmt: skip
        return OTHER

    def __len__(self) -> int:
        return len(self._named)


class BridgeMetrics:
    def __init__(self, max_clusters: int = DEFAULT_MAX_CLUSTERS) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cluster_label = ClusterLabels(max_clusters)
        self.events = Counter("kaudit_bridge_events", "Audit events accepted (acked by Kafka)", ["cluster"], registry=r)
        self.batches = Counter("kaudit_bridge_batches", "Webhook batches accepted", ["cluster"], registry=r)
        self.bytes = Counter("kaudit_bridge_bytes", "Decompressed body bytes accepted", ["cluster"], registry=r)
        self.deadletter = Counter(
            "kaudit_bridge_deadletter_items", "Invalid EventList items sent to the dead-letter topic", ["cluster"],
            registry=r,
        )  # fmt: skip
        self.cluster_labels = Gauge(
            "kaudit_bridge_cluster_labels",
            "Clusters with a series of their own (at most KAUDIT_METRICS_MAX_CLUSTERS; the rest are cluster=\"_other\")",
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

    def count_batch(self, cluster: str, events: int, size: int, deadletters: int) -> None:
        """One acknowledged batch, under the cluster's label within the budget."""
        label = self.cluster_label(cluster)
        self.events.labels(label).inc(events)
        self.batches.labels(label).inc()
        self.bytes.labels(label).inc(size)
        if deadletters:
            self.deadletter.labels(label).inc(deadletters)
        self.cluster_labels.set(len(self.cluster_label))
