"""End to end: webhook -> bridge -> Kafka -> worker -> sink -> queryable (python -m pipeline.bench.e2e).

Starts its own Kafka (port 9192, state under var/bench-e2e), a sink (embedded chDB + query API), a worker and
the bridge, then POSTs EventList batches built from the samples (auditIDs made unique) at a fixed rate and
polls the sink for stored rows (its /metrics; --poll sql: a count() through the query API). Prints the
sustained rate (events visible in a query per second) and freshness (bridge 2xx -> stored, hence visible to
every query) p50/p99 per batch, the CPU of each component, and the CPU per event with the
rate the machine's cores could carry at that cost (sizing: cores per 10k events/s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import orjson

from pipeline.bench.worker import cpu_seconds, machine_speed, realistic_event
from pipeline.config import REPO_ROOT
from pipeline.models.readers import RawEvent, read_events
from pipeline.samples import SAMPLES


def build_bodies(
    n_events: int, per_batch: int, mix: str = "realistic", start: int = 0
) -> tuple[list[bytes], list[list[str]]]:
    """EventList bodies of the mix (see pipeline.bench.worker: `realistic` is what clusters mostly send,
    `samples` the security-heavy sample files where half the events alert), stamped now."""
    base = []
    if mix == "samples":
        for f in sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md"):
            base += [it.event for it in read_events(f.read_bytes()) if isinstance(it, RawEvent)]
    now = time.time()
    bodies, deletes, i = [], [], 0
    while i < n_events:
        items, dels = [], []
        for _ in range(min(per_batch, n_events - i)):
            ev = dict(base[i % len(base)]) if base else realistic_event(i)
            ev["auditID"] = str(uuid.UUID(int=start + i))
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".000000Z"
            ev["requestReceivedTimestamp"] = ev["stageTimestamp"] = ts
            ev.pop("kind", None)
            ev.pop("apiVersion", None)
            items.append(ev)
            if ev.get("verb") == "delete" and ev.get("stage") == "ResponseComplete":
                dels.append(ev["auditID"])
            i += 1
        bodies.append(orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}))
        deletes.append(dels)
    return bodies, deletes


STORED_ROWS = 'kaudit_sink_rows_total{table="audit_events"} '


def parse_stored_rows(metrics_text: str) -> int:
    """audit_events rows the sink has inserted, from its /metrics (0 before its first insert)."""
    return int(float(next((ln.rpartition(" ")[2] for ln in metrics_text.splitlines() if ln.startswith(STORED_ROWS)), "0")))


def stored_rows(api: str) -> int:
    import urllib.request

    return parse_stored_rows(urllib.request.urlopen(f"{api}/metrics", timeout=5).read().decode())


class AlertWatcher(threading.Thread):
    """Records when each risky-verb alert arrives on the JSON alerts topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex}",
                           "auto.offset.reset": "earliest"})  # fmt: skip
        self.c.subscribe([topic])

    def run(self) -> None:
        while not self.stop.is_set():
            for m in self.c.consume(500, timeout=0.05):
                if m.error() or not m.value():
                    continue
                a = orjson.loads(m.value())
                if a.get("rule_id") == "risky-verb":
                    self.seen.setdefault(a["auditid"], time.monotonic())
        self.c.close()


async def run_load(args, bodies: list[bytes], deletes: list[list[str]], api: str, bridge: str,
                   watcher: AlertWatcher, base: int = 0, report: bool = True) -> None:  # fmt: skip
    """Offer the bodies at args.rate; ``base`` events are already visible (a warm-up before this run)."""
    acked: list[tuple[float, int]] = []  # (ack time, cumulative events)
    ack_of_batch: dict[int, float] = {}
    visible: list[tuple[float, int]] = []
    n_events = args.events if report else args.warmup  # the warm-up has its own count
    total = sum(min(args.per_batch, n_events - i * args.per_batch) for i in range(len(bodies)))
    done = asyncio.Event()

    n_del = sum(map(len, deletes))

    async def poll(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            if args.no_sink:  # the alert path alone: done when every delete has its alert
                if sum(1 for ids in deletes for a in ids if a in watcher.seen) >= n_del:
                    visible.append((time.monotonic(), total))
                    done.set()
                await asyncio.sleep(0.05)
                continue
            if args.poll == "sql":
                async with session.post(f"{api}/api/sql", json={"sql": "SELECT count() FROM audit_events"}) as r:
                    n = (await r.json())["rows"][0][0]
            else:  # rows the sink's inserts returned for: visible to every query from then on
                async with session.get(f"{api}/metrics") as r:
                    n = parse_stored_rows(await r.text())
            n -= base
            visible.append((time.monotonic(), n))
            if n >= total:
                done.set()
            await asyncio.sleep(0.2)  # resolution enough for seconds of freshness

    async with aiohttp.ClientSession() as session:
        poller = asyncio.create_task(poll(session))
        interval = args.per_batch / args.rate
        t0 = time.monotonic()
        sem = asyncio.Semaphore(16)
        cum = 0
        tasks = []

        async def send(i: int, body: bytes, cum_after: int) -> None:
            async with sem:
                async with session.post(f"{bridge}/audit/bench-{i % 8}", data=body,
                                        headers={"Content-Type": "application/json"}) as r:  # fmt: skip
                    if r.status // 100 != 2:
                        raise RuntimeError(f"bridge answered {r.status}: {await r.text()}")
                acked.append((time.monotonic(), cum_after))
                ack_of_batch[i] = time.monotonic()

        for i, body in enumerate(bodies):
            cum += min(args.per_batch, n_events - i * args.per_batch)
            delay = t0 + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(i, body, cum)))
        await asyncio.gather(*tasks)
        t_sent = time.monotonic()
        try:
            await asyncio.wait_for(done.wait(), timeout=300)
        finally:
            done.set()
            await poller
    t_end = next(t for t, n in visible if n >= total)
    if not report:
        return
    fresh = []
    for t_ack, cum_after in sorted(acked, key=lambda x: x[1]):
        t_vis = next((t for t, n in visible if n >= cum_after and t >= t_ack), None)
        if t_vis is not None:
            fresh.append(t_vis - t_ack)
    fresh.sort()
    time.sleep(1)
    lat = sorted(watcher.seen[a] - ack_of_batch[i] for i, ids in enumerate(deletes) for a in ids if a in watcher.seen)
    if lat:
        print(f"e2e: delete -> alert on k8s-audit-alerts-json after bridge 2xx: p50 {statistics.median(lat):.3f} s, "
              f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.3f} s ({len(lat)}/{n_del} deletes alerted)")  # fmt: skip
    if args.no_sink:
        print(f"e2e (no sink): offered {args.rate:,} events/s; sent {args.events:,} events in {t_sent - t0:.1f} s; "
              f"every delete alerted after {t_end - t0:.1f} s")  # fmt: skip
        return
    print(f"e2e: offered {args.rate:,} events/s; sent {args.events:,} events in {t_sent - t0:.1f} s; "
          f"all visible after {t_end - t0:.1f} s -> sustained {args.events / (t_end - t0):,.0f} events/s")  # fmt: skip
    # the rate the warehouse grows while loaded: unlike "sustained", not diluted by the last batch's freshness
    # (a pipeline that keeps up shows the offered rate here; one that falls behind, its own capacity)
    (ta, na), (tb, nb) = (next((t, n) for t, n in visible if n >= total * f) for f in (0.1, 0.9))
    if tb > ta:
        print(f"e2e: rate of rows becoming visible between 10% and 90% of the run: {(nb - na) / (tb - ta):,.0f} events/s")
    print(f"e2e: freshness (bridge 2xx -> visible in a query) p50 {statistics.median(fresh):.2f} s, "
          f"p99 {fresh[min(len(fresh) - 1, int(len(fresh) * 0.99))]:.2f} s over {len(fresh)} batches")  # fmt: skip


SETTLE_SECONDS = 65.0
# The broker runs with Kafka's own JVM flags (bin/kafka-run-class.sh, KAFKA_JVM_PERFORMANCE_OPTS), as a production
# broker does, not with infra/kafka's test default (C1 only, for a quick start): with a 1.5M-event warm-up the
# C2-compiled broker cost 6.6-7.0 us per event here, the C1 one 8.2-9.1. --broker-jvm test measures the latter.
WARMUP_SECONDS = 100
BROKER_JVM_OPTS = {
    "production": "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 "
    "-XX:+ExplicitGCInvokesConcurrent",
    "test": None,  # infra/kafka/kafka.sh's default
}


def jit_seconds(pid: int) -> float:
    """CPU seconds the JVM's JIT compiler threads used so far (a broker still compiling is not warm yet)."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as fh:
                st = fh.read()
        except OSError:
            continue
        if "Compiler" in st[st.find("(") + 1 : st.rfind(")")]:
            fields = st.rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def remove_previous_run(var: Path, settle: float) -> None:
    """Delete a previous run's state, then let the file system settle before measuring.

    ext4 without a journal (this project's VMs) skips every inode freed in the last minute when it creates a
    file (fs/ext4/ialloc.c, recently_deleted), and a previous run leaves thousands of files (Kafka segments, chDB
    parts of ~200 files each). Measured right after runs back to back, openat() was 15% of the sink's CPU and the
    pipeline read 56 instead of 48 us per event; after a settled minute it was 1.5%."""
    if not var.exists():
        return
    n = sum(1 for _ in var.rglob("*"))
    shutil.rmtree(var, ignore_errors=True)
    if settle > 0 and n > 1000:
        os.sync()
        print(f"e2e: deleted the previous run's {n:,} files; waiting {settle:.0f} s for the file system to settle "
              "(--settle 0 skips it)", flush=True)  # fmt: skip
        time.sleep(settle)


def cpu_budget(cpu: dict[str, float], events: int, cores: int) -> str:
    """CPU per event of the run, and the rate this machine's cores could carry at that cost: a measure of
    capacity that does not depend on the run's length or on how far behind the pipeline fell (for sizing: cores
    per 10k events/s). The load generator is the bench's, not the pipeline's, so it is shown apart. Below
    saturation the figure is a floor: batches fill less and per-batch costs spread over fewer events (90 us per
    event at 15k offered against 66-76 at 30k, the same hour)."""
    if events <= 0:
        return "e2e: CPU per event: no events"
    us = {n: c / events * 1e6 for n, c in cpu.items()}
    pipeline = sum(v for n, v in us.items() if n != "load generator")
    everything = sum(us.values())
    if pipeline <= 0:  # /proc unreadable (another OS, or the processes gone)
        return "e2e: CPU per event: not measured"
    parts = ", ".join(f"{n} {v:.1f}" for n, v in us.items() if n != "load generator")
    return (f"e2e: CPU per event: pipeline {pipeline:.1f} us ({parts}), load generator {us.get('load generator', 0):.1f} us; "
            f"{cores} cores at this cost carry ~{cores / everything * 1e6:,.0f} events/s with the load generator, "
            f"~{cores / pipeline * 1e6:,.0f} without it ({pipeline / 100:.2f} cores per 10k events/s; "
            "a floor unless the run saturated the machine)")  # fmt: skip


COUNTED = {  # metric sample -> name in request_counts (the per-request/per-insert costs of a steady load)
    "sink": {"kaudit_sink_batches_total": "inserts", 'kaudit_sink_rows_total{table="audit_events"}': "rows"},
    "worker": {"kaudit_worker_group_records_count": "groups", "kaudit_worker_group_records_sum": "records"},
}


def request_counts(urls: dict[str, list[str]]) -> dict[str, float]:
    """Counters of sink batches (one insert per table each) and worker groups (one produce request per output
    partition each), summed over the processes' /metrics."""
    import urllib.request

    out: dict[str, float] = {}
    for comp, names in COUNTED.items():
        for url in urls.get(comp, []):
            try:
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                continue
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                if name in names:
                    out[names[name]] = out.get(names[name], 0.0) + float(value)
    return out


def request_line(d: dict[str, float], wall: float) -> str:
    parts = []
    if d.get("inserts"):
        parts.append(f"sink {d['inserts']:.0f} batches ({d['inserts'] / wall:.2f}/s, "
                     f"{d.get('rows', 0) / d['inserts']:,.0f} events each)")  # fmt: skip
    if d.get("groups"):
        parts.append(f"worker {d['groups']:.0f} groups ({d['groups'] / wall:.1f}/s, "
                     f"{d.get('records', 0) / d['groups']:.1f} raw records each)")  # fmt: skip
    return "e2e: during the run: " + ("; ".join(parts) or "no counters read")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=5_000, help="offered events/s")
    ap.add_argument("--per-batch", type=int, default=400)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-sink", action="store_true",
                    help="measure the alert path alone (bridge -> Kafka -> worker -> alerts topic), without the sink")  # fmt: skip
    ap.add_argument("--warmup", type=int, default=None,
                    help="events sent (and waited for) before measuring (default: 100 s at --rate, about what the "
                    "broker's C2 JIT needs to finish: at 30k/s its compiler threads used 0.8-0.9 CPU s of a 33-s run "
                    "after 1.5M events, 0.2 s after 3M)")
    ap.add_argument("--broker-jvm", choices=sorted(BROKER_JVM_OPTS), default="production",
                    help="production: Kafka's own JVM flags (C2 JIT, default); test: infra/kafka's C1-only default")
    ap.add_argument("--poll", choices=["metrics", "sql"], default="metrics",
                    help="how the bench sees rows arrive: the sink's inserted-rows counter (default, nearly free) or "
                         "a SELECT count() through the query API 5 times a second (what a reader sees, but each "
                         "poll costs the sink CPU that is then counted as the pipeline's)")  # fmt: skip
    ap.add_argument("--settle", type=float, default=SETTLE_SECONDS,
                    help="seconds to wait after deleting a previous run's state (0: don't; see remove_previous_run)")
    ap.add_argument("--mix", choices=["realistic", "samples"], default="realistic",
                    help="realistic: 85%% controller reads, 5%% deletes/patches (default); samples: the sample files")  # fmt: skip
    args = ap.parse_args()
    if args.warmup is None:
        args.warmup = args.rate * WARMUP_SECONDS
    var = REPO_ROOT / "var" / "bench-e2e"
    env = {**os.environ, "KAUDIT_VAR": str(var), "KAUDIT_KAFKA_PORT": "9192", "KAUDIT_KAFKA_CONTROLLER_PORT": "9193",
           "KAUDIT_KAFKA_BOOTSTRAP": "127.0.0.1:9192", "KAUDIT_KAFKA_LIBS": str(REPO_ROOT / "var/kafka/libs"),
           "KAUDIT_API_PORT": "8181", "KAUDIT_BRIDGE_PORT": "8866", "KAUDIT_LOG_LEVEL": "WARNING",
           "KAUDIT_WORKER_METRICS_PORT": "8182"}  # fmt: skip
    jvm = BROKER_JVM_OPTS[args.broker_jvm]
    if jvm is not None and "KAUDIT_KAFKA_JVM_OPTS" not in os.environ:
        env["KAUDIT_KAFKA_JVM_OPTS"] = jvm
    kafka = ["bash", str(REPO_ROOT / "infra/kafka/kafka.sh")]
    subprocess.run([*kafka, "down"], env=env, check=False, capture_output=True)
    remove_previous_run(var, args.settle)
    subprocess.run([*kafka, "up"], env=env, check=True, capture_output=True)
    procs: list[subprocess.Popen] = []
    var.mkdir(parents=True, exist_ok=True)
    try:
        kaudit = [sys.executable, "-m", "pipeline.cli"]
        sink = [] if args.no_sink else [("sink", [])]
        for name, extra in [*sink, *[("worker", ["--id", f"w{i}"]) for i in range(args.workers)],
                            ("bridge", ["--no-auth"])]:  # fmt: skip
            log = open(var / f"{name}-{len(procs)}.log", "wb")
            procs.append(subprocess.Popen([*kaudit, name, *extra], env=env, stdout=log, stderr=subprocess.STDOUT))
        api, bridge = "http://127.0.0.1:8181", "http://127.0.0.1:8866"
        deadline = time.monotonic() + 90
        import urllib.request

        for url in ([] if args.no_sink else [f"{api}/api/health"]) + [f"{bridge}/readyz"]:
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"e2e: {url} not ready; logs in {var}") from None
                    time.sleep(0.3)
        bodies, deletes = build_bodies(args.events, args.per_batch, args.mix)
        print(f"e2e: {args.mix} mix, {args.events:,} events in batches of {args.per_batch}, {args.workers} worker(s); "
              f"{machine_speed()}")  # fmt: skip
        watcher = AlertWatcher("127.0.0.1:9192", "k8s-audit-alerts-json")
        watcher.start()
        names = [*([] if args.no_sink else ["sink"]), *[f"worker w{i}" for i in range(args.workers)], "bridge"]
        pids = {n: p.pid for n, p in zip(names, procs, strict=True)}
        try:
            pids["kafka"] = int((var / "kafka" / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            pass
        pids["load generator"] = os.getpid()
        if args.warmup:
            # a fresh JVM spends its first minute compiling (C2 alone took ~40% of the broker's CPU in a cold
            # run); a long-running broker is warm, so warm every component up first and measure after
            wbodies, wdel = build_bodies(args.warmup, args.per_batch, args.mix, start=10**9)
            t_w = time.monotonic()
            asyncio.run(run_load(args, wbodies, wdel, api, bridge, watcher, report=False))
            print(f"e2e: warm-up of {args.warmup:,} events done in {time.monotonic() - t_w:.1f} s")
        urls = {"sink": [] if args.no_sink else [f"{api}/metrics"],
                "worker": [f"http://127.0.0.1:{8182 + i}/metrics" for i in range(args.workers)]}  # fmt: skip
        cnt0 = request_counts(urls)
        cpu0, t_load = {n: cpu_seconds(p) for n, p in pids.items()}, time.monotonic()
        jit0 = jit_seconds(pids["kafka"]) if "kafka" in pids else 0.0
        base = args.warmup if args.no_sink or args.poll == "sql" else stored_rows(api)
        asyncio.run(run_load(args, bodies, deletes, api, bridge, watcher, base=base))
        watcher.stop.set()
        cpu1, wall = {n: cpu_seconds(p) for n, p in pids.items()}, time.monotonic() - t_load
        print(request_line({k: v - cnt0.get(k, 0) for k, v in request_counts(urls).items()}, wall))
        print("e2e: CPU seconds during the run (cores busy on average): " + ", ".join(
            f"{n} {cpu1[n] - cpu0[n]:.1f} ({(cpu1[n] - cpu0[n]) / wall:.2f})" for n in pids
        ) + f"; wall {wall:.1f} s")  # fmt: skip
        if "kafka" in pids:
            jit = jit_seconds(pids["kafka"]) - jit0
            print(f"e2e: broker JVM flags {args.broker_jvm!r}; its JIT compiler threads used {jit:.1f} CPU s of that"
                  + (" (not warm yet: raise --warmup)" if jit > 0.3 else ""))  # fmt: skip
        print(cpu_budget({n: cpu1[n] - cpu0[n] for n in pids}, args.events, len(os.sched_getaffinity(0))))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run([*kafka, "down"], env=env, check=False, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
