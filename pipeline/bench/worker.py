"""Worker throughput (python -m pipeline.bench.worker; make bench-worker).

Pre-fills a raw topic on a local Kafka with 400-event EventList records built from the samples (auditIDs made
unique so dedup keeps them), then measures events/s of:
  worker     one `kaudit worker` process: parse + dedupe + window + flag + produce, acks before commit
  processor  the same Processor in-process without Kafka (CPU cost of parse/dedupe/window/flag/encode)
  ceiling    a plain confluent-kafka consume loop over the same raw topic (bytes only)
  naive      the straightforward faust design: one event per record, two windowed tables updated per event
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from pipeline import config
from pipeline.agents import testing as T
from pipeline.config import Settings, get_settings
from pipeline.kafka.topics import ensure_topics

SAMPLES = T.REPO.parent / "shared" / "data" / "audit-samples"


def build_records(n_events: int, per_record: int = 400, clusters: int = 8) -> list[T.RawRecord]:
    base = []
    for f in sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md"):
        base += T.sample_events(f)
    records, i = [], 0
    while i < n_events:
        items = []
        for _ in range(min(per_record, n_events - i)):
            ev = dict(base[i % len(base)])
            ev["auditID"] = f"{uuid.UUID(int=i)}"
            items.append(ev)
            i += 1
        records.append(T.raw_record(f"bench-{len(records) % clusters}", T.eventlist(items)))
    return records


def bench_processor(s: Settings, records: list[T.RawRecord]) -> float:
    from pipeline.agents.processor import Processor
    from pipeline.agents.rules import RuleSet, load_rules
    from pipeline.agents.state import PartitionState

    proc = Processor(s, RuleSet(load_rules()))
    st = PartitionState(0, 900)
    n = 0
    t0 = time.process_time()
    for off, r in enumerate(records):
        out = proc.process(st, off, r.cluster.encode(), r.value, r.headers)
        for a in out.alerts:
            proc.encode_alert(a)
        n += out.n_events
    return n / (time.process_time() - t0)


def bench_worker(s: Settings, n_events: int) -> tuple[float, dict]:
    var = Path(s.var)
    w = T.start_worker(s, "bench")
    alive = var / "worker-bench.alive"
    t_first = n_first = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if w.poll() is not None:
                raise RuntimeError(f"worker exited with {w.returncode}; see {var}/worker-bench.log")
            try:
                body = json.loads(alive.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
                continue
            done = body["totals"]["events"]
            if done and t_first is None:
                t_first, n_first = time.monotonic(), done
            if done >= n_events:
                return (done - n_first) / max(time.monotonic() - t_first, 1e-9), body["totals"]
            time.sleep(0.05)
        raise RuntimeError("worker did not finish within 600 s")
    finally:
        T.stop_worker(w)


def bench_ceiling(s: Settings, n_records: int, per_record: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    topic = s.topic(config.RAW)
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "fetch.max.bytes": s.max_message_bytes})  # fmt: skip
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    n = nbytes = 0
    t0 = time.perf_counter()
    while n < n_records:
        for m in c.consume(500, timeout=1.0):
            if not m.error():
                n += 1
                nbytes += len(m.value())
    dt = time.perf_counter() - t0
    c.close()
    return n * per_record / dt


NAIVE_APP = r'''
import sys, time, json, faust
boot, topic, n_total, app_id = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
app = faust.App(app_id, broker=f"kafka://{boot}", store="memory://", web_enabled=False, topic_partitions=4,
                topic_disable_leader=True, datadir=f"/tmp/{app_id}")
src = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw")
verbs = app.Table("verbs", default=int, partitions=4).tumbling(60, expires=3600)
codes = app.Table("codes", default=int, partitions=4).tumbling(60, expires=3600)
state = {"n": 0, "t0": None}
@app.agent(src)
async def count(stream):
    async for value in stream:
        ev = json.loads(value)
        if state["t0"] is None:
            state["t0"] = time.monotonic()
        verbs[ev.get("verb", "")] += 1
        codes[(ev.get("responseStatus") or {}).get("code", 0)] += 1
        state["n"] += 1
        if state["n"] >= n_total:
            print(json.dumps({"rate": (state["n"] - 1) / (time.monotonic() - state["t0"])}), flush=True)
            import os; os._exit(0)
app.main()
'''


def bench_naive(s: Settings, n_events: int) -> float:
    """One event per record, windowed tables per event: the design the issue asks to beat."""
    from pipeline.kafka.producer import make_producer

    topic = s.topic("naive-raw")
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(30)
    base = []
    for f in sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md"):
        base += T.sample_events(f)
    p = make_producer(s)
    for i in range(n_events):
        ev = dict(base[i % len(base)])
        ev["auditID"] = str(uuid.UUID(int=i))
        while True:
            try:
                p.produce(topic, value=orjson.dumps(ev), key=f"bench-{i % 8}".encode())
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    p.flush(60)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(NAIVE_APP)
    try:
        out = subprocess.run(
            [sys.executable, fh.name, s.kafka_bootstrap, topic, str(n_events), f"{s.topic_prefix}naive"],
            capture_output=True, text=True, timeout=900, cwd=tempfile.gettempdir(),
        )  # fmt: skip
    finally:
        os.unlink(fh.name)
    import re

    m = re.search(r'\{"rate": ([0-9.]+)\}', out.stdout + out.stderr)  # faust routes stdout into its log
    if m:
        return float(m.group(1))
    raise RuntimeError(f"naive faust app gave no result: {out.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kafka", default=get_settings().kafka_bootstrap, help="bootstrap of a local broker (make up)")
    ap.add_argument("--events", type=int, default=200_000, help="events pre-filled for the worker (default 200k)")
    ap.add_argument("--naive-events", type=int, default=10_000, help="events for the naive faust baseline (default 10k)")
    ap.add_argument("--skip-naive", action="store_true")
    args = ap.parse_args()
    var = Path(tempfile.mkdtemp(prefix="kaudit-bench-worker-"))
    s = Settings(kafka_bootstrap=args.kafka, topic_prefix=f"bench{uuid.uuid4().hex[:6]}-", var=var)
    ensure_topics(s)
    records = build_records(args.events)
    t0 = time.perf_counter()
    T.produce(s, records)
    raw_mb = sum(len(r.value) for r in records) / 1e6
    print(f"pre-filled {len(records)} raw records ({args.events:,} events, {raw_mb:.0f} MB) in {time.perf_counter() - t0:.1f}s; prefix {s.topic_prefix}")
    rate_proc = bench_processor(s, records[: max(1, len(records) // 4)])
    print(f"processor (in-process, no Kafka, CPU time): {rate_proc:,.0f} events/s")
    rate_ceiling = bench_ceiling(s, len(records), 400)
    print(f"ceiling (plain confluent-kafka consume loop, bytes only): {rate_ceiling:,.0f} events/s")
    rate_worker, totals = bench_worker(s, args.events)
    print(f"worker (one `kaudit worker` process, parse+dedupe+window+flag+produce): {rate_worker:,.0f} events/s  totals {totals}")
    if not args.skip_naive:
        rate_naive = bench_naive(s, args.naive_events)
        print(f"naive faust (1 event/record, 2 windowed tables per event, {args.naive_events:,} events): {rate_naive:,.0f} events/s")
    print(f"goal 50,000 events/s per worker process: {'met' if rate_worker >= 50_000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
