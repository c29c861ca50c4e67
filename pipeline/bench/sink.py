"""Sink throughput: rows/s into chDB from a pre-filled events topic (goal: 150,000 rows/s per sink process).

    python -m pipeline.bench.sink [--events 1000000] [--batch 400] [--runs 3]     (uses KAUDIT_KAFKA_BOOTSTRAP)

Events are the metadata-level audit2rbac sample (the common shape; --mix realistic: the worker bench's mix, bigger
events with annotations, groups and small bodies), copied with fresh auditIDs, in EventBatch
records of --batch events (a webhook batch), each with its VerbStats and StatusStats records, all produced once.
Then --runs fresh `kaudit sink`-equivalent processes (a new consumer group and a new chDB path each: chDB allows
one path per process) read the same topics. Per run:
  end to end   rows / (first poll -> last audit_events row acknowledged by ClickHouse, offsets committed next)
  steady       rows after the first batch / (first batch acknowledged -> last row acknowledged): the rate a
               running sink keeps up, without consumer-group join and the first batch's fill
  cpu          process CPU seconds (all threads, chDB's included) per 100k rows; peak RSS
and a check that the warehouse holds every row exactly once. The goal is judged on the median end-to-end rate.
1M events make a run of ~5-7 s, of which consumer-group join and the first fetch (~0.5-0.7 s before the first
event arrives) are ~10%; with --events 300000 (~2 s) they weigh ~30%.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from pipeline.config import REPO_ROOT, get_settings
from pipeline.samples import SAMPLES

GOAL = 150_000
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


def base_events(mix: str) -> list[dict]:
    """The normalized events a run cycles through (auditIDs are replaced per copy)."""
    if mix == "realistic":  # the worker bench's mix: controller reads, writes with small bodies, deletes
        from pipeline.bench.worker import realistic_event
        from pipeline.models.normalize import normalize_event

        return [normalize_event(realistic_event(i), "bench") for i in range(2000)]
    from pipeline.sinks.fixtures import sample_sources

    return dict(sample_sources(SAMPLES))["audit2rbac"]


def produce(s, n_events: int, per_record: int, mix: str = "metadata") -> int:  # noqa: ANN001
    """Fill the events and stats topics; returns the number of records per topic."""
    from pipeline.kafka.producer import make_producer
    from pipeline.kafka.topics import ensure_topics
    from pipeline.models.avro import codec, encode_event_batch, source_id_suffix
    from pipeline.sinks.fixtures import produce_source

    ensure_topics(s)
    base = base_events(mix)
    # each sample event encoded once with a placeholder auditID, which is then patched in place (same length)
    ae = codec("audit_event")
    blobs = [ae.encode({**ev, "auditid": PLACEHOLDER}) for ev in base]
    at = [b.index(PLACEHOLDER.encode()) for b in blobs]
    eb = codec("event_batch")
    p = make_producer(s)
    n = off = 0
    while n < n_events:
        k = min(per_record, n_events - n)
        idx = [(n + i) % len(base) for i in range(k)]
        events = []
        for i in idx:
            u = str(uuid.uuid4()).encode()
            events.append(blobs[i][: at[i]] + u + blobs[i][at[i] + len(u) :])
        part = off % s.raw_partitions
        sid = f"{part}:{off}"
        # as the worker writes it: each event ending with its source_id (the blobs end with an empty one), the
        # events array one sized block (pipeline.models.avro.encode_event_batch)
        suffix = source_id_suffix(sid)
        value = encode_event_batch(sid, "bench", 0, b"".join([e[:-1] + suffix for e in events]), k, [])
        p.produce(s.topic("k8s-audit-events"), value, key=b"bench", headers=eb.headers, partition=part)
        produce_source(p, s, part, sid, "bench", [base[i] for i in idx], stats=True, events_topic=False)
        p.poll(0)
        n += k
        off += 1
    p.flush(120)
    return off


def run_once(s, n: int, max_rows: int | None) -> dict:  # noqa: ANN001
    """One sink over the filled topics until every row is acknowledged; returns the measurements."""
    from pipeline.gc_tuning import tune_gc
    from pipeline.sinks.metrics import M
    from pipeline.sinks.runner import Sink, SinkOptions

    stop = threading.Event()
    sink = Sink(s, SinkOptions(group=f"bench-{uuid.uuid4().hex[:8]}", max_rows=max_rows), stop)
    sink.open_warehouse()
    tune_gc()  # as `kaudit sink` does
    thread = threading.Thread(target=sink.run)
    counter = M.rows.labels("audit_events")
    cpu0 = time.process_time()
    start = time.perf_counter()
    thread.start()
    first = first_rows = None
    while (done := counter._value.get()) < n:  # noqa: SLF001
        if first is None and done:
            first, first_rows = time.perf_counter(), done
        time.sleep(0.002)
        if not thread.is_alive():
            raise SystemExit("sink stopped early")
    end = time.perf_counter()
    cpu = time.process_time() - cpu0
    stop.set()
    thread.join()
    c = sink.client
    stored = c.query("SELECT count(), uniqExact(source_id, auditid, stage) FROM audit_events").result_rows[0]
    stats = [c.query(f"SELECT sum(count) FROM {t}").result_rows[0][0] for t in ("verb_stats", "status_stats")]
    steady = (n - first_rows) / (end - first) if first is not None and end > first and n > first_rows else 0.0
    return {"rows": n, "seconds": end - start, "rate": n / (end - start), "steady": steady,
            "first_ack": (first or end) - start, "cpu_per_100k": cpu / n * 100_000, "batches": sink.committed_batches,
            "exact": list(stored) == [n, n] and stats == [n, n],
            "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def measure(args: argparse.Namespace, prefix: str) -> list[dict] | None:
    """Run the sink --runs times over the filled topics, each in its own process; prints each run."""
    results = []
    for i in range(args.runs):
        cmd = [sys.executable, "-m", "pipeline.bench.sink", "--prefix", prefix, "--events", str(args.events)]
        if args.max_rows:
            cmd += ["--max-rows", str(args.max_rows)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, cwd=REPO_ROOT)
        if out.returncode != 0:
            print(out.stdout + out.stderr[-3000:])
            return None
        r = json.loads(out.stdout.strip().splitlines()[-1])
        shutil.rmtree(r["tmp"], ignore_errors=True)  # the run's chDB (the child has exited)
        results.append(r)
        print(f"run {i + 1}: {r['rows']:,} rows in {r['seconds']:.2f}s = {r['rate']:,.0f} rows/s end to end; "
              f"steady {r['steady']:,.0f} rows/s; first batch acked at {r['first_ack']:.2f}s; "
              f"cpu {r['cpu_per_100k']:.2f}s/100k rows; {r['batches']} batches; peak RSS {r['rss_mib']:.0f} MiB; "
              f"{'exactly once' if r['exact'] else 'NOT EXACT'}")  # fmt: skip
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=400, help="events per EventBatch record")
    ap.add_argument("--max-rows", type=int, default=None, help="sink batch size (default: the sink's own)")
    ap.add_argument("--runs", type=int, default=3, help="sink processes to run over the same topics")
    ap.add_argument("--mix", choices=["metadata", "realistic"], default="metadata",
                    help="metadata: the audit2rbac sample's events (the common shape; default); realistic: the "
                         "worker bench's mix (~760 B per event, with annotations, groups and small bodies)")  # fmt: skip
    ap.add_argument("--prefix", help=argparse.SUPPRESS)  # child: consume this prefix, print one JSON line
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.prefix:
        tmp = Path(tempfile.mkdtemp(prefix="kaudit-bench-sink-"))
        s = get_settings().model_copy(update={"topic_prefix": args.prefix, "var": tmp,
                                              "clickhouse_dsn": f"chdb://{tmp / 'chdb'}"})  # fmt: skip
        print(json.dumps({**run_once(s, args.events, args.max_rows), "tmp": str(tmp)}), flush=True)
        return 0
    prefix = f"bench{uuid.uuid4().hex[:6]}-"
    s = get_settings().model_copy(update={"topic_prefix": prefix})
    t0 = time.perf_counter()
    records = produce(s, args.events, args.batch, args.mix)
    print(
        f"produced {args.events:,} events ({args.mix} mix) in {records} EventBatch records (+ stats) "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    try:
        results = measure(args, prefix)
    finally:  # the bench's own topics (a fresh prefix per bench run)
        from confluent_kafka.admin import AdminClient

        from pipeline.kafka.topics import topic_specs

        admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})  # kept alive until the futures are done
        deleting = admin.delete_topics(list(topic_specs(s)))
        for topic, f in deleting.items():
            if err := f.exception(timeout=30):  # a failure only leaves topics behind
                print(f"could not delete {topic}: {err}")
    if results is None:
        return 1
    rates = sorted(r["rate"] for r in results)
    steady = sorted(r["steady"] for r in results)
    med = statistics.median(rates)
    print(f"sink into chDB: {med:,.0f} rows/s end to end (median of {len(rates)}; range {rates[0]:,.0f}-{rates[-1]:,.0f}),"
          f" steady {statistics.median(steady):,.0f} ({steady[0]:,.0f}-{steady[-1]:,.0f})")  # fmt: skip
    if args.mix == "metadata":  # the goal is set on the common shape; realistic events are ~2x the bytes
        print(f"goal {GOAL:,} rows/s per sink process: {'MET' if med >= GOAL else 'NOT MET'}")
    else:
        print(f"(the goal of {GOAL:,} rows/s is judged on the default metadata mix)")
    if not all(r["exact"] for r in results):
        print("ERROR: a run did not store every row exactly once")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
