"""Sink throughput: rows/s into chDB from a pre-filled events topic (goal: 150,000 rows/s per process).

    python -m pipeline.bench.sink [--events 300000] [--batch 400]      (uses KAUDIT_KAFKA_BOOTSTRAP)

Events are the metadata-level audit2rbac sample (the common shape), copied with fresh auditIDs, in
EventBatch records of --batch events (a webhook batch). The clock runs from the sink's first poll to the
last row acknowledged by ClickHouse (offsets committed).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path

from pipeline.config import REPO_ROOT, get_settings
from pipeline.kafka.producer import make_producer
from pipeline.kafka.topics import ensure_topics
from pipeline.sinks.fixtures import produce_source, sample_sources
from pipeline.sinks.metrics import M
from pipeline.sinks.runner import Sink, SinkOptions

SAMPLES = REPO_ROOT.parent / "shared" / "data" / "audit-samples"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=400, help="events per EventBatch record")
    ap.add_argument("--max-rows", type=int, default=50_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="kaudit-bench-sink-"))
    s = get_settings().model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:6]}-", "var": tmp,
                                          "clickhouse_dsn": f"chdb://{tmp / 'chdb'}"})  # fmt: skip
    ensure_topics(s)
    base = dict(sample_sources(SAMPLES))["audit2rbac"]
    p = make_producer(s)
    t0 = time.perf_counter()
    n = off = 0
    while n < args.events:
        chunk = [{**base[(n + i) % len(base)], "auditid": f"{uuid.uuid4()}"} for i in range(min(args.batch, args.events - n))]
        part = off % s.raw_partitions
        produce_source(p, s, part, f"{part}:{off}", "bench", chunk, stats=True)
        p.poll(0)
        n += len(chunk)
        off += 1
    p.flush(120)
    print(f"produced {n} events in {off} records ({time.perf_counter() - t0:.1f}s)")
    stop = threading.Event()
    sink = Sink(s, SinkOptions(group="bench", max_rows=args.max_rows), stop)
    sink.open_warehouse()
    thread = threading.Thread(target=sink.run)
    start = time.perf_counter()
    thread.start()
    counter = M.rows.labels("audit_events")
    while counter._value.get() < n:  # noqa: SLF001
        time.sleep(0.01)
        if not thread.is_alive():
            raise SystemExit("sink stopped early")
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join()
    print(f"sink: {n} rows in {elapsed:.2f}s = {n / elapsed:,.0f} rows/s into chDB "
          f"(batches {sink.committed_batches}, goal 150,000 rows/s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
