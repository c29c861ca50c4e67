"""Normalize throughput on one core: read + normalize every sample event, repeated (python -m pipeline.bench.normalize)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline.models.normalize import normalize_event
from pipeline.models.readers import RawEvent, read_events
from pipeline.samples import SAMPLES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=Path, default=SAMPLES)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    bodies = [p.read_bytes() for p in sorted(args.samples.glob("*/*")) if p.suffix != ".md"]
    n_bytes = sum(map(len, bodies))
    events = 0
    start = time.process_time()
    wall = time.perf_counter()
    rounds = 0
    while time.perf_counter() - wall < args.seconds:
        for body in bodies:
            for item in read_events(body):
                if isinstance(item, RawEvent):
                    normalize_event(item.event, "bench")
                    events += 1
        rounds += 1
    cpu = time.process_time() - start
    print(f"normalize: {events / cpu:,.0f} events/s on one core ({rounds} rounds over {len(bodies)} sample files, "
          f"{n_bytes * rounds / cpu / 1e6:.1f} MB/s, avg {n_bytes / (events / rounds):,.0f} B/event)")  # fmt: skip
    # Typical small Metadata-level events dominate real traffic: measure those alone too.
    small = (SAMPLES / "audit2rbac" / "demo-k8s-1.8-v1beta1.log").read_bytes()
    n, t0 = 0, time.process_time()
    for _ in range(20):
        for item in read_events(small):
            normalize_event(item.event, "bench")
            n += 1
    print(f"normalize: {n / (time.process_time() - t0):,.0f} events/s on one core (Metadata-level v1beta1 log lines)")


if __name__ == "__main__":
    main()
