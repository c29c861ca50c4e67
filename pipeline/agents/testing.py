"""Helpers for worker tests and the benchmark: build raw records the way the bridge does, produce them, start
worker processes, read the output topics back, and compute expected aggregates independently of the worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from pipeline import config
from pipeline.config import Settings
from pipeline.kafka import headers as H
from pipeline.kafka.producer import make_producer
from pipeline.models.avro import decode_record
from pipeline.models.normalize import NormalizeError, normalize_event
from pipeline.models.readers import RawEvent, read_events

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class RawRecord:
    cluster: str
    value: bytes
    headers: list[tuple[str, bytes]]


def eventlist(events: list[dict[str, Any]]) -> bytes:
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events})


def raw_record(cluster: str, value: bytes, fmt: str = "eventlist", **extra: str) -> RawRecord:
    hdrs = H.make(
        cluster=cluster,
        received_at=time.time_ns() // 1000,
        source="webhook",
        batch_id=uuid.uuid4().hex,
        format=fmt,
        **extra,
    )
    return RawRecord(cluster, value, hdrs)


def sample_events(path: Path) -> list[dict[str, Any]]:
    return [it.event for it in read_events(path.read_bytes()) if isinstance(it, RawEvent)]


def batches(events: list[dict[str, Any]], size: int = 400) -> Iterable[list[dict[str, Any]]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]


def produce(s: Settings, records: Iterable[RawRecord], partition_of: dict[str, int] | None = None) -> int:
    """Produce raw records keyed by cluster (default partitioner, like the bridge); wait for all acks."""
    p = make_producer(s, **{"linger.ms": 20})
    errors: list[Any] = []
    n = 0
    topic = s.topic(config.RAW)
    for r in records:
        kwargs: dict[str, Any] = {}
        if partition_of and r.cluster in partition_of:
            kwargs["partition"] = partition_of[r.cluster]
        while True:
            try:
                p.produce(topic, value=r.value, key=r.cluster.encode(), headers=r.headers,
                          on_delivery=lambda err, msg: errors.append(err) if err else None, **kwargs)  # fmt: skip
                break
            except BufferError:
                p.poll(0.1)
        n += 1
        p.poll(0)
    left = p.flush(60)
    if left or errors:
        raise RuntimeError(f"producing raw records failed: {left} unsent, errors {errors[:3]}")
    return n


def read_all(s: Settings, base: str, *, expect: int | None = None, idle: float = 3.0, timeout: float = 120.0) -> list[Any]:
    """Every message of a topic (all partitions) from the beginning, as confluent Message objects.

    Stops when ``expect`` messages were read (then drains ``idle`` more seconds to catch extras), or after
    ``idle`` seconds without a new message once something was read, or at ``timeout``."""
    topic = s.topic(base)
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"reader-{uuid.uuid4().hex}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "fetch.max.bytes": s.fetch_max_bytes})  # fmt: skip
    md = c.list_topics(topic, timeout=10).topics[topic]
    c.assign([TopicPartition(topic, p, 0) for p in md.partitions])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = c.consume(1000, timeout=0.5)
            got = [m for m in msgs if not m.error()]
            if got:
                out.extend(got)
                last_new = time.monotonic()
            quiet_for = time.monotonic() - last_new
            if expect is not None:
                if len(out) >= expect and quiet_for >= idle:
                    break
            elif out and quiet_for >= idle:
                break
    finally:
        c.close()
    return out


def decode_all(stem: str, msgs: list[Any]) -> list[dict[str, Any]]:
    return [decode_record(stem, m.value(), m.headers()) for m in msgs]


def stats_totals(records: list[dict[str, Any]], key: str, *, distinct_sources: bool = True) -> Counter:
    """(cluster, window_start, key) -> count, summing each source_id once (what the sink does)."""
    seen: set[str] = set()
    total: Counter = Counter()
    for rec in records:
        if distinct_sources:
            if rec["source_id"] in seen:
                continue
            seen.add(rec["source_id"])
        for row in rec["rows"]:
            total[(row["cluster"], row["window_start"], row[key])] += row["count"]
    return total


def expected_totals(
    clustered_events: Iterable[tuple[str, dict[str, Any]]], window_seconds: int = 60, stages: set[str] | None = None
) -> tuple[Counter, Counter, int]:
    """Independent reference: dedup by (cluster, auditID, stage), then count per window. -> (verbs, codes, n)."""
    seen: set[tuple[str, str, str]] = set()
    verbs: Counter = Counter()
    codes: Counter = Counter()
    size = window_seconds * 1_000_000
    for cluster, raw in clustered_events:
        try:
            ev = normalize_event(raw, cluster)
        except NormalizeError:
            continue
        k = (cluster, ev["auditid"], ev["stage"])
        if k in seen:
            continue
        seen.add(k)
        if stages and ev["stage"] not in stages:
            continue
        ws = ev["stage_ts"] - ev["stage_ts"] % size
        verbs[(cluster, ws, ev["verb"])] += 1
        codes[(cluster, ws, ev["responsestatus_code"])] += 1
    return verbs, codes, len(seen)


def worker_env(s: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAUDIT_")}
    env.update(
        {
            "KAUDIT_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "KAUDIT_TOPIC_PREFIX": s.topic_prefix,
            "KAUDIT_VAR": str(s.var),
            "KAUDIT_RAW_PARTITIONS": str(s.raw_partitions),
            "KAUDIT_WINDOW_SECONDS": str(s.window_seconds),
            "KAUDIT_DEDUP_HORIZON_SECONDS": str(s.dedup_horizon_seconds),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_worker(s: Settings, worker_id: str, *args: str, log_dir: Path | None = None, **env: str) -> subprocess.Popen:
    """A real worker process (python -m pipeline.cli worker); stderr goes to <log_dir>/worker-<id>.log."""
    log_dir = log_dir or Path(s.var)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"worker-{worker_id}.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "worker", "--id", worker_id, *args],
        cwd=str(REPO),
        env=worker_env(s, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_worker(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(10)
    return proc.returncode
