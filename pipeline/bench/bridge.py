"""Bridge throughput and latency: ``python -m pipeline.bench.bridge`` (``make bench-bridge``).

Starts the bridge as a subprocess (``kaudit bridge --no-auth``) against a local Kafka (``--kafka``, else
KAUDIT_BENCH_KAFKA, else a broker of its own started with infra/kafka/kafka.sh on 127.0.0.1:29092, state in
$KAUDIT_VAR/bench-kafka), posts pre-built 400-event EventList bodies made of the sample events with aiohttp from
this process, and prints events/s, batches/s and p50/p99 batch latency at full load and at half that load, next to
the ceiling: confluent-kafka producing the same bytes (acks=all, idempotent) with no HTTP. Numbers only; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid

from pipeline.config import RAW, REPO_ROOT, Settings, get_settings
from pipeline.samples import SAMPLES


def bodies_from_samples(n_bodies: int = 16, batch: int = 400) -> list[bytes]:
    """EventList bodies of ``batch`` sample events each (the samples cycled, auditIDs made unique)."""
    from pipeline.ingest.replay import eventlist_body, iter_events

    files = sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md")
    events = list(iter_events(files))
    if not events:
        raise SystemExit(f"bench: no sample events under {SAMPLES}")
    out, k = [], 0
    for b in range(n_bodies):
        items = []
        for _ in range(batch):
            ev = dict(events[k % len(events)])
            ev["auditID"] = f"bench-{b}-{k}"
            items.append(ev)
            k += 1
        out.append(eventlist_body(items))
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def load(url: str, bodies: list[bytes], seconds: float, concurrency: int, rate_batches: float = 0.0) -> dict:
    import aiohttp

    lat: list[float] = []
    codes: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    interval = 1.0 / rate_batches if rate_batches else 0.0
    next_t = [time.perf_counter()]
    sent = [0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(i: int) -> None:
            while True:
                if interval:
                    t = next_t[0]
                    next_t[0] = max(t, time.perf_counter() - 1.0) + interval
                    delay = t - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if time.perf_counter() >= stop_at:
                    return
                body = bodies[sent[0] % len(bodies)]
                sent[0] += 1
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
                if r.status == 200:
                    lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"batches": len(lat), "elapsed": elapsed, "lat": lat, "codes": codes}


def ceiling(s: Settings, bodies: list[bytes], seconds: float) -> dict:
    """confluent-kafka alone: the same bodies, same producer settings, as fast as acks come back."""
    from pipeline.kafka.producer import make_producer

    p = make_producer(s)
    acked = [0]

    def cb(err, _msg) -> None:
        if err is None:
            acked[0] += 1

    topic = s.topic(RAW)
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds:
        try:
            p.produce(topic, bodies[i % len(bodies)], key=b"bench", on_delivery=cb)
            i += 1
        except BufferError:
            p.poll(0.01)
        p.poll(0)
        if i - acked[0] > 64:  # keep a bounded window in flight, like the bridge's concurrent batches
            p.poll(0.005)
    p.flush(60)
    return {"batches": acked[0], "elapsed": time.perf_counter() - t0}


def ack_totals(base: str) -> tuple[float, float]:
    """(sum, count) of the bridge's Kafka ack latency histogram."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    vals = {}
    for line in text.splitlines():
        if line.startswith("kaudit_bridge_kafka_ack_seconds_sum") or line.startswith("kaudit_bridge_kafka_ack_seconds_count"):
            name, value = line.split()
            vals[name.rsplit("_", 1)[1]] = float(value)
    return vals.get("sum", 0.0), vals.get("count", 0.0)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kafka", default=os.environ.get("KAUDIT_BENCH_KAFKA"), help="bootstrap of a running broker")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each phase (10)")
    ap.add_argument("--concurrency", type=int, default=16, help="batches in flight (16)")
    args = ap.parse_args(argv)

    s0 = get_settings()
    started_kafka = None
    port = int(os.environ.get("KAUDIT_BENCH_KAFKA_PORT", "29092"))
    if not args.kafka and _listening(port):
        print(f"bench: using the broker already listening on 127.0.0.1:{port}", flush=True)
        args.kafka = f"127.0.0.1:{port}"
    if not args.kafka:
        env = {
            **os.environ, "KAUDIT_VAR": str(s0.var / "bench-kafka"), "KAUDIT_KAFKA_PORT": str(port),
            "KAUDIT_KAFKA_CONTROLLER_PORT": str(port + 1), "KAUDIT_KAFKA_LIBS": str(s0.var / "kafka" / "libs"),
            "PYTHON": sys.executable,
        }  # fmt: skip
        print(f"bench: starting a broker on 127.0.0.1:{port} (infra/kafka/kafka.sh)", flush=True)
        subprocess.run(["bash", str(REPO_ROOT / "infra/kafka/kafka.sh"), "up"], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        args.kafka, started_kafka = f"127.0.0.1:{port}", env
    prefix = f"bench-{uuid.uuid4().hex[:6]}-"
    s = Settings(kafka_bootstrap=args.kafka, topic_prefix=prefix)
    from pipeline.kafka.topics import ensure_topics

    ensure_topics(s)
    bodies = bodies_from_samples()
    mean_body = statistics.mean(len(b) for b in bodies)
    bport = free_port()
    env = {**os.environ, "KAUDIT_TOPIC_PREFIX": prefix, "KAUDIT_LOG_LEVEL": "WARNING"}
    bridge = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "bridge", "--no-auth", "--host", "127.0.0.1", "--port", str(bport),
         "--kafka", args.kafka], env=env,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{bport}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{base}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or bridge.poll() is not None:
                raise SystemExit("bench: bridge did not become ready")
            time.sleep(0.2)
        url = f"{base}/audit/bench"
        print(f"bench: {len(bodies)} bodies of 400 sample events, {mean_body / 1024:.0f} KiB each; "
              f"{args.concurrency} in flight, {args.seconds:g} s per phase; 2 cores shared by load generator, "
              "bridge and broker", flush=True)  # fmt: skip
        asyncio.run(load(url, bodies, 2.0, args.concurrency))  # warm-up
        a0 = ack_totals(base)
        full = asyncio.run(load(url, bodies, args.seconds, args.concurrency))
        a1 = ack_totals(base)
        full_bps = full["batches"] / full["elapsed"]
        half = asyncio.run(load(url, bodies, args.seconds, args.concurrency, rate_batches=full_bps / 2))
        a2 = ack_totals(base)
        full["ack"] = (a1[0] - a0[0]) / max(1.0, a1[1] - a0[1])
        half["ack"] = (a2[0] - a1[0]) / max(1.0, a2[1] - a1[1])
        ceil = ceiling(s, bodies, args.seconds)
        rows = [
            ("bridge, full load", full),
            ("bridge, half load", half),
            ("ceiling: confluent-kafka, no HTTP", ceil),
        ]
        print(f"{'':36} {'events/s':>10} {'batches/s':>10} {'MiB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'kafka ack ms (mean)':>20}")
        for name, r in rows:
            bps = r["batches"] / r["elapsed"]
            lat = r.get("lat")
            p50 = f"{pct(lat, 0.5) * 1000:8.1f}" if lat else f"{'-':>8}"
            p99 = f"{pct(lat, 0.99) * 1000:8.1f}" if lat else f"{'-':>8}"
            ack = f"{r['ack'] * 1000:20.1f}" if "ack" in r else f"{'-':>20}"
            print(f"{name:36} {bps * 400:10,.0f} {bps:10,.1f} {bps * mean_body / 2**20:8.1f} {p50} {p99} {ack}")
        bad = {k: v for k, v in full["codes"].items() if k != 200}
        if bad:
            print(f"bench: non-200 answers at full load: {bad}")
        print(f"bench: bridge reaches {full_bps / (ceil['batches'] / ceil['elapsed']) * 100:.0f}% of the ceiling")
    finally:
        bridge.send_signal(signal.SIGTERM)
        try:
            bridge.wait(60)
        except subprocess.TimeoutExpired:
            bridge.kill()
        if started_kafka is not None and not os.environ.get("KAUDIT_BENCH_KEEP_KAFKA"):
            subprocess.run(["bash", str(REPO_ROOT / "infra/kafka/kafka.sh"), "down"], env=started_kafka,
                           check=False, stdout=subprocess.DEVNULL)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
