"""Prometheus metrics of the sink (served at /metrics by the query API, or by --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram


class _Metrics:
    rows = Counter("kaudit_sink_rows_total", "Rows inserted into ClickHouse", ["table"])
    skipped = Counter("kaudit_sink_skipped_sources_total", "Sources skipped because already stored", ["table"])
    records = Counter("kaudit_sink_records_total", "Kafka records consumed", ["topic"])
    batches = Counter("kaudit_sink_batches_total", "Batches written and committed")
    retries = Counter("kaudit_sink_retries_total", "Failed warehouse operations that will be retried", ["reason"])
    deadletter = Counter("kaudit_sink_deadletter_total", "Records sent to the dead-letter topic")
    insert_seconds = Histogram(
        "kaudit_sink_batch_seconds", "Time to write one batch to ClickHouse (all tables)",
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
    )  # fmt: skip
    warehouse_up = Gauge("kaudit_sink_warehouse_up", "1 while the last warehouse operation succeeded")


M = _Metrics()
