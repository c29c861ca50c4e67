"""The worker's /metrics: real worker processes on the real broker; the values are checked against what the
test produced and what the output topics hold."""

from __future__ import annotations

import random
import signal
import time
import urllib.request
from collections import defaultdict

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import config
from pipeline.agents import testing as T
from pipeline.config import Settings
from tests.alertmanager import free_port
from tests.test_agents_worker import synth_event

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """name -> {labels tuple: value} of every sample."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            out[smp.name][tuple(sorted(smp.labels.items()))] = smp.value
    return out


def total(m: dict[str, dict[tuple, float]], name: str) -> float:
    return sum(m.get(name, {}).values())


def wait_metric(port: int, proc, name: str, want: float, timeout: float = 180.0) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    m: dict = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}"
        try:
            m = scrape(port)
        except OSError:
            m = {}
        if total(m, name) >= want:
            return m
        time.sleep(0.5)
    pytest.fail(f"{name} never reached {want}: {total(m, name)}")


def test_worker_metrics_real_values_and_rebuild(settings: Settings):
    s = settings
    rng = random.Random(11)
    now_us = time.time_ns() // 1000
    records, n_events, keys = [], 0, set()
    for i in range(24):
        cluster = f"m{i % 8}"
        events = [synth_event(rng, now_us - rng.randint(0, 300) * 1_000_000) for _ in range(rng.randint(10, 60))]
        rec = T.raw_record(cluster, T.eventlist(events))
        records.append(rec)
        n_events += len(events)
        keys |= {(cluster, e["auditID"], e["stage"]) for e in events}
        if i % 6 == 0:  # the same batch delivered twice: all of its events are duplicates
            records.append(T.raw_record(cluster, rec.value))
            n_events += len(events)
    records.append(T.raw_record("m1", b"\x00\xffnot json"))  # poison: one dead-letter record
    T.produce(s, records)
    port = free_port()
    w = T.start_worker(s, "m", KAUDIT_WORKER_METRICS_PORT=str(port))
    try:
        m = wait_metric(port, w, "kaudit_worker_records_total", len(records))
        time.sleep(2.5)  # one housekeeping round refreshes lag and state gauges
        m = scrape(port)
        assert total(m, "kaudit_worker_records_total") == len(records)
        assert total(m, "kaudit_worker_events_total") == n_events
        assert total(m, "kaudit_worker_events_kept_total") == len(keys)
        assert total(m, "kaudit_worker_duplicates_total") == n_events - len(keys)
        alerts = T.read_all(s, config.ALERTS, idle=1.0, timeout=30)
        assert total(m, "kaudit_worker_alerts_total") == len(alerts) > 0
        dead = [orjson.loads(x.value()) for x in T.read_all(s, config.DEADLETTER, idle=1.0, timeout=30)]
        assert total(m, "kaudit_worker_deadletter_records_total") == len(dead) == 1
        parts = {dict(k)["partition"] for k in m["kaudit_worker_dedup_keys"]}
        assert len(parts) >= 2  # 8 clusters over 4 partitions
        assert total(m, "kaudit_worker_dedup_keys") == len(keys)
        assert total(m, "kaudit_worker_dedup_memory_bytes") >= len(keys) * 77
        assert set(m["kaudit_worker_consumer_lag"].values()) == {0.0}
        assert {dict(k)["partition"] for k in m["kaudit_worker_consumer_lag"]} == parts
        assert total(m, "kaudit_worker_rebuilds_total") == len(parts)
        assert {dict(k)["partition"] for k in m["kaudit_worker_rebuild_seconds"]} == parts
        assert total(m, "kaudit_worker_group_seconds_count") >= 1
        assert total(m, "kaudit_worker_group_records_sum") == len(records)
        assert total(m, "process_resident_memory_bytes") > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:  # noqa: S310
            assert orjson.loads(r.read())["ok"] is True

        # kill -9, restart: the first new record of each partition rebuilds its state from the events topic
        w.send_signal(signal.SIGKILL)
        w.wait(10)
        w = T.start_worker(s, "m2", KAUDIT_WORKER_METRICS_PORT=str(port))
        more = [T.raw_record(f"m{i}", T.eventlist([synth_event(rng, now_us)])) for i in range(8)]
        T.produce(s, more)
        m = wait_metric(port, w, "kaudit_worker_records_total", len(more))
        assert total(m, "kaudit_worker_rebuilds_total") == len(parts)
        assert total(m, "kaudit_worker_rebuild_keys") == len(keys)  # every key read back, none twice
        assert total(m, "kaudit_worker_events_kept_total") == len(more)
    finally:
        T.stop_worker(w)
