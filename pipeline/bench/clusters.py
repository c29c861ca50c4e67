"""A thousand clusters at once (python -m pipeline.bench.clusters --clusters 1000): a fleet against one pipeline.

Generates realistic cluster names (``prod-eu-west-1-a-017``) and a tokens file with one hashed token per cluster,
starts a real bridge (with that tokens file), worker and sink on a Kafka broker (its own on port 9292 under
var/bench-clusters, or ``--bootstrap`` for one already running, with a fresh topic prefix), then POSTs EventList
batches from every cluster with at most ``--concurrency`` requests in flight, each cluster with its own token.
Reports events/s (acked and visible in the warehouse), whether every cluster's count in the warehouse equals what
the bridge acknowledged, how many series the bridge's /metrics carries (the cardinality budget), where the raw
records landed (partition spread against librdkafka's partitioner), the RSS of each component and how long the
1,000-entry tokens file takes to reload (parse alone, and a rotated token accepted by the running bridge).

The same helpers drive tests/test_ingest_clusters.py at a smaller size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from pipeline import config
from pipeline.access.tokens import hash_token
from pipeline.agents import testing as T
from pipeline.bench.e2e import build_bodies
from pipeline.bench.worker import cpu_seconds, machine_speed
from pipeline.config import REPO_ROOT, Settings

ENVS = ("prod", "stage", "dev", "qa")
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1", "ap-northeast-1", "sa-east-1")
ZONES = ("a", "b", "c")
BUDGET_METRICS = ("kaudit_bridge_events_total", "kaudit_bridge_batches_total", "kaudit_bridge_bytes_total")


def cluster_names(n: int) -> list[str]:
    """n distinct names shaped like real fleets': <env>-<region>-<zone>-<NNN> (deterministic)."""
    out = []
    for i in range(n):
        env = ENVS[i % len(ENVS)]
        region = REGIONS[(i // len(ENVS)) % len(REGIONS)]
        zone = ZONES[(i // (len(ENVS) * len(REGIONS))) % len(ZONES)]
        out.append(f"{env}-{region}-{zone}-{i:03d}")
    return out


def librdkafka_partition(key: bytes, partitions: int) -> int:
    """The partition librdkafka's default partitioner (``consistent_random``: CRC-32 of the key modulo the
    partition count, random only for a null key) gives a keyed record. confluent-kafka keeps that default and
    pipeline.kafka.producer.producer_config sets no ``partitioner``."""
    return (zlib.crc32(key) & 0xFFFFFFFF) % partitions


def write_tokens_file(path: Path, clusters: list[str], *, hashed: bool = True) -> dict[str, str]:
    """A bridge tokens file with one token per cluster (its sha256: form when ``hashed``); cluster -> token."""
    tokens = {c: secrets.token_urlsafe(24) for c in clusters}
    doc = {"clusters": {c: (hash_token(t) if hashed else t) for c, t in tokens.items()}}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    tmp.replace(path)  # atomic: the bridge never reads half a file
    return tokens


def work_items(clusters: list[str], batches: int, per_batch: int, start: int = 0) -> list[tuple[str, bytes, int]]:
    """(cluster, EventList body, events) for ``batches`` bodies per cluster, interleaved so every cluster posts
    from the first second; audit ids are unique across the whole run (``start`` offsets them)."""
    bodies, _ = build_bodies(len(clusters) * batches * per_batch, per_batch, start=start)
    return [(clusters[i % len(clusters)], body, per_batch) for i, body in enumerate(bodies)]


@dataclass
class LoadResult:
    acked: Counter = field(default_factory=Counter)  # cluster -> events acknowledged (2xx)
    batches: Counter = field(default_factory=Counter)
    retries: int = 0
    seconds: float = 0.0
    max_in_flight: int = 0


async def post_all(bridge: str, items: list[tuple[str, bytes, int]], tokens: dict[str, str] | None,
                   concurrency: int = 200, max_retries: int = 20) -> LoadResult:  # fmt: skip
    """POST every item with at most ``concurrency`` in flight; a 503 (Kafka slow, overloaded) is retried with the
    same body after a pause, as the apiserver does (the worker deduplicates what reached Kafka twice)."""
    res = LoadResult()
    sem = asyncio.Semaphore(concurrency)
    in_flight = 0

    async def one(session: aiohttp.ClientSession, cluster: str, body: bytes, n: int) -> None:
        nonlocal in_flight
        hdrs = {"Content-Type": "application/json"}
        if tokens is not None:
            hdrs["Authorization"] = f"Bearer {tokens[cluster]}"
        async with sem:
            in_flight += 1
            res.max_in_flight = max(res.max_in_flight, in_flight)
            try:
                for attempt in range(max_retries + 1):
                    async with session.post(f"{bridge}/audit/{cluster}", data=body, headers=hdrs) as r:
                        text = await r.read()
                        if r.status // 100 == 2:
                            res.acked[cluster] += orjson.loads(text)["accepted"]
                            res.batches[cluster] += 1
                            return
                        if r.status != 503 or attempt == max_retries:
                            raise RuntimeError(f"bridge answered {r.status} for {cluster}: {text[:300]!r}")
                    res.retries += 1
                    await asyncio.sleep(0.2 * (attempt + 1))
            finally:
                in_flight -= 1

    conn = aiohttp.TCPConnector(limit=concurrency)
    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(one(session, c, b, n) for c, b, n in items))
    res.seconds = time.perf_counter() - t0
    return res


def http_json(url: str, body: dict | None = None, timeout: float = 30) -> dict:
    req = urllib.request.Request(url, data=orjson.dumps(body) if body is not None else None,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
        return orjson.loads(r.read())


def http_text(url: str, timeout: float = 30) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback
        return r.read().decode()


def warehouse_counts(api: str) -> Counter:
    """cluster -> events stored (through the query API, as any reader would count them)."""
    doc = http_json(f"{api}/api/sql", {"sql": "SELECT cluster, count() FROM audit_events GROUP BY cluster"})
    return Counter({c: int(n) for c, n in doc["rows"]})


def wait_counts(api: str, total: int, timeout: float, alive: list[subprocess.Popen] | None = None) -> Counter:
    """The per-cluster counts once ``total`` events are stored (then a pause, so a duplicate would show)."""
    deadline = time.monotonic() + timeout
    got: Counter = Counter()
    while time.monotonic() < deadline:
        for p in alive or ():
            if p.poll() is not None:
                raise RuntimeError(f"{p.args} exited with {p.returncode}")
        try:
            got = warehouse_counts(api)
        except OSError:
            got = Counter()
        if sum(got.values()) >= total:
            time.sleep(1.0)
            return warehouse_counts(api)
        time.sleep(0.5)
    raise TimeoutError(f"only {sum(got.values())} of {total} events stored after {timeout:g} s")


def metric_series(text: str) -> dict[str, dict[str, float]]:
    """name -> {cluster label value -> value} for the samples of /metrics that carry a cluster label."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if "cluster" in smp.labels:
                out.setdefault(smp.name, {})[smp.labels["cluster"]] = smp.value
    return out


def _samples(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {smp.name: smp.value for fam in text_string_to_metric_families(text) for smp in fam.samples if not smp.labels}


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_http(url: str, timeout: float = 90, procs: list[subprocess.Popen] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)  # noqa: S310 - loopback
            return
        except OSError:
            for p in procs or ():
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args} exited with {p.returncode} before {url} answered") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready after {timeout:g} s") from None
            time.sleep(0.3)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pipeline:
    """Real sink (embedded chDB + query API), worker and bridge processes for ``s`` (its topic prefix and var)."""

    s: Settings
    tokens_file: Path | None
    logs: Path
    api_port: int = field(default_factory=free_port)
    bridge_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def bridge(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    def start(self, workers: int = 1) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = T.worker_env(self.s, KAUDIT_CLICKHOUSE_DSN=self.s.clickhouse_dsn, KAUDIT_API_PORT=str(self.api_port),
                           KAUDIT_API_URL="", KAUDIT_METRICS_MAX_CLUSTERS=str(self.s.metrics_max_clusters),
                           KAUDIT_LOG_LEVEL="WARNING")  # fmt: skip
        kaudit = [sys.executable, "-m", "pipeline.cli"]

        def spawn(name: str, *args: str) -> None:
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
            self.procs[name] = subprocess.Popen([*kaudit, *args], cwd=REPO_ROOT, env=env, stdout=log,
                                                stderr=subprocess.STDOUT)  # fmt: skip

        spawn("sink", "sink", "--group", f"{self.s.topic_prefix}sink", "--max-seconds", "0.3")
        for i in range(workers):
            spawn(f"worker-w{i}", "worker", "--id", f"w{i}")
        auth = ["--tokens-file", str(self.tokens_file)] if self.tokens_file else ["--no-auth"]
        spawn("bridge", "bridge", "--port", str(self.bridge_port), *auth)
        procs = list(self.procs.values())
        wait_http(f"{self.api}/api/health", procs=procs)
        wait_http(f"{self.bridge}/readyz", procs=procs)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def alive(self) -> list[subprocess.Popen]:
        return list(self.procs.values())


@contextmanager
def running(s: Settings, tokens_file: Path | None, logs: Path, workers: int = 1) -> Iterator[Pipeline]:
    p = Pipeline(s, tokens_file, logs)
    try:
        p.start(workers)
        yield p
    finally:
        p.stop()


def raw_partitions_of(s: Settings, expect: int, timeout: float = 60) -> dict[str, set[int]]:
    """cluster -> raw partitions its records are in, read back from Kafka (``expect`` records)."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"spread-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    c.subscribe([s.topic(config.RAW)])
    out: dict[str, set[int]] = {}
    n, deadline = 0, time.monotonic() + timeout
    try:
        while n < expect and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() or m.key() is None:
                    continue
                out.setdefault(m.key().decode(), set()).add(m.partition())
                n += 1
    finally:
        c.close()
    return out


def spread(clusters: list[str], partitions: int) -> Counter:
    """Clusters per raw partition under librdkafka's partitioner."""
    return Counter(librdkafka_partition(c.encode(), partitions) for c in clusters)


def lookup_us(clusters: list[str]) -> tuple[float, float, float]:
    """Per-request cost (us) of finding a token among one per cluster: the bridge's digest dict, the readers'
    digest dict, and the readers' previous scan (compare_digest against every entry), measured in this run."""
    import hmac

    from pipeline.access.readers import Readers
    from pipeline.access.tokens import token_digest
    from pipeline.ingest.bridge.auth import Authenticator, parse_tokens

    auth = Authenticator(tokens_file=None)
    auth._table = parse_tokens(orjson.dumps({"clusters": {c: f"t-{c}" for c in clusters}}))
    readers = Readers()
    readers.apply_file(orjson.dumps({"readers": {f"team-{c}": {"token": f"r-{c}", "clusters": [c]} for c in clusters}}), "bench")
    entries = readers._entries

    def scan(token: str) -> object:  # the lookup before: every digest compared, no early exit
        digest, found = token_digest(token), None
        for d, reader in entries:
            if hmac.compare_digest(d, digest) and found is None:
                found = reader
        return found

    def per_call(fn, arg) -> float:  # noqa: ANN001 - best of 5 passes over every token (the cores are shared)
        args = [(c, arg(c)) for c in clusters]
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for c, a in args:
                fn(c, a)
            best = min(best, time.perf_counter() - t0)
        return best / len(clusters) * 1e6

    bridge = per_call(lambda c, a: auth.check(c, a, None), lambda c: f"Bearer t-{c}")
    new = per_call(lambda c, a: readers.authenticate(a), lambda c: f"r-{c}")
    old = per_call(lambda c, a: scan(a), lambda c: f"r-{c}")
    return bridge, new, old


def reload_seconds(path: Path, clusters: list[str], rounds: int = 5) -> tuple[float, float]:
    """(best parse+install time of the tokens file, of a readers file with one reader per cluster), in-process."""
    from pipeline.access.readers import Readers
    from pipeline.ingest.bridge.auth import Authenticator

    auth = Authenticator(tokens_file=path)
    readers_path = path.with_name("readers-bench.json")
    readers_path.write_bytes(orjson.dumps({"readers": {f"team-{c}": {"token": hash_token(f"r-{c}"), "clusters": [c]}
                                                       for c in clusters}}))  # fmt: skip
    readers = Readers(readers_path)
    best_t = best_r = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        auth.load()
        best_t = min(best_t, time.perf_counter() - t0)
        t0 = time.perf_counter()
        readers.load()
        best_r = min(best_r, time.perf_counter() - t0)
    return best_t, best_r


async def rotation_seconds(bridge: str, path: Path, clusters: list[str], tokens: dict[str, str],
                           timeout: float = 30) -> float:  # fmt: skip
    """Rewrite the tokens file with a new token for every cluster and time until the running bridge accepts the
    new token of the last cluster (the file is polled every second: this includes up to 1 s of waiting)."""
    new = write_tokens_file(path, clusters)
    t0 = time.perf_counter()
    last = clusters[-1]
    body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []})
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - t0 < timeout:
            async with session.post(f"{bridge}/audit/{last}", data=body, headers={
                    "Content-Type": "application/json", "Authorization": f"Bearer {new[last]}"}) as r:  # fmt: skip
                if r.status == 200:
                    tokens.update(new)
                    return time.perf_counter() - t0
            await asyncio.sleep(0.05)
    raise TimeoutError("the bridge did not pick up the rotated tokens file")


def check_budget(series: dict[str, dict[str, float]], budget: int, acked: Counter, batches: Counter) -> list[str]:
    """What is wrong with the bridge's per-cluster series (empty = within budget and exact)."""
    problems = []
    for name in BUDGET_METRICS:
        values = series.get(name, {})
        if len(values) > budget + 1:
            problems.append(f"{name}: {len(values)} cluster label values (budget {budget} + _other)")
    ev, ba = series.get("kaudit_bridge_events_total", {}), series.get("kaudit_bridge_batches_total", {})
    if round(sum(ev.values())) != sum(acked.values()):
        problems.append(f"events: /metrics sums to {sum(ev.values()):.0f}, {sum(acked.values())} acked")
    if round(sum(ba.values())) != sum(batches.values()):
        problems.append(f"batches: /metrics sums to {sum(ba.values()):.0f}, {sum(batches.values())} acked")
    for c, v in ev.items():
        if c != "_other" and round(v) != acked[c]:
            problems.append(f"events of {c}: /metrics {v:.0f}, acked {acked[c]}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--batches", type=int, default=4, help="batches per cluster")
    ap.add_argument("--per-batch", type=int, default=50, help="events per batch")
    ap.add_argument("--concurrency", type=int, default=200, help="requests in flight at most")
    ap.add_argument("--budget", type=int, default=Settings.model_fields["metrics_max_clusters"].default,
                    help="KAUDIT_METRICS_MAX_CLUSTERS of the bridge")  # fmt: skip
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bootstrap", help="use this running Kafka (fresh topic prefix) instead of starting one on 9292")
    args = ap.parse_args()
    var = REPO_ROOT / "var" / "bench-clusters"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    kafka_env = {**os.environ, "KAUDIT_VAR": str(var), "KAUDIT_KAFKA_PORT": "9292", "KAUDIT_KAFKA_CONTROLLER_PORT": "9293",
                 "KAUDIT_KAFKA_LIBS": os.environ.get("KAUDIT_KAFKA_LIBS", str(REPO_ROOT / "var/kafka/libs"))}  # fmt: skip
    kafka = ["bash", str(REPO_ROOT / "infra/kafka/kafka.sh")]
    if not args.bootstrap:
        subprocess.run([*kafka, "up"], env=kafka_env, check=True, capture_output=True)
    try:
        return run(args, var, args.bootstrap or "127.0.0.1:9292")
    finally:
        if not args.bootstrap:
            subprocess.run([*kafka, "down"], env=kafka_env, check=False, capture_output=True)


def run(args: argparse.Namespace, var: Path, bootstrap: str) -> int:
    from pipeline.kafka.topics import ensure_topics

    s = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"bc{uuid.uuid4().hex[:8]}-", var=var / "state",
                 clickhouse_dsn=f"chdb://{var / 'chdb'}", metrics_max_clusters=args.budget)  # fmt: skip
    ensure_topics(s)
    clusters = cluster_names(args.clusters)
    tokens_path = var / "tokens.json"
    tokens = write_tokens_file(tokens_path, clusters)
    t_parse, r_parse = reload_seconds(tokens_path, clusters)
    us_bridge, us_readers, us_scan = lookup_us(clusters)
    items = work_items(clusters, args.batches, args.per_batch)
    total = sum(n for _, _, n in items)
    print(f"clusters: {len(clusters):,} clusters x {args.batches} batches x {args.per_batch} events = {total:,} events, "
          f"{args.concurrency} in flight, metrics budget {args.budget}, {s.raw_partitions} raw partitions; "
          f"{machine_speed()}")  # fmt: skip
    with running(s, tokens_path, var / "logs", args.workers) as p:
        pids = {**{n: pr.pid for n, pr in p.procs.items()}, "load generator": os.getpid()}
        cpu0 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        t0 = time.perf_counter()
        res = asyncio.run(post_all(p.bridge, items, tokens, args.concurrency))
        counts = wait_counts(p.api, total, timeout=600, alive=p.alive())
        t_visible = time.perf_counter() - t0
        cpu1 = {n: cpu_seconds(pid) for n, pid in pids.items()}
        rss = {n: rss_bytes(pid) for n, pid in pids.items()}
        text = http_text(f"{p.bridge}/metrics")
        series = metric_series(text)
        ack = {k: v for k, v in _samples(text).items() if k.startswith("kaudit_bridge_kafka_ack_seconds_")}
        problems = check_budget(series, args.budget, res.acked, res.batches)
        rot = asyncio.run(rotation_seconds(p.bridge, tokens_path, clusters, tokens))
        landed = raw_partitions_of(s, sum(res.batches.values()))
    wrong = {c: (counts.get(c, 0), n) for c, n in res.acked.items() if counts.get(c, 0) != n}
    extra = set(counts) - set(res.acked)
    print(f"clusters: {sum(res.acked.values()):,} events acked in {res.seconds:.1f} s -> {sum(res.acked.values()) / res.seconds:,.0f} "
          f"events/s ({sum(res.batches.values()) / res.seconds:,.0f} batches/s, {res.retries} retried 503s, "
          f"max {res.max_in_flight} in flight); all stored after {t_visible:.1f} s -> {total / t_visible:,.0f} events/s")  # fmt: skip
    print(f"clusters: per-cluster exactness: {len(clusters) - len(wrong)}/{len(clusters)} clusters exact "
          f"(warehouse count == acked){'' if not wrong else f'; WRONG e.g. {list(wrong.items())[:3]}'}"
          f"{'' if not extra else f'; unexpected clusters {sorted(extra)[:3]}'}")  # fmt: skip
    n_series = sum(len(v) for v in series.values())
    per_metric = {k.removeprefix("kaudit_bridge_"): len(v) for k, v in series.items()}
    print(f"clusters: bridge /metrics: {n_series} samples with a cluster label ({per_metric}; prometheus_client adds "
          f"a _created sample per counter series); budget {'held, sums exact' if not problems else 'BROKEN: ' + '; '.join(problems[:3])}; "
          f"Kafka ack {ack.get('kaudit_bridge_kafka_ack_seconds_sum', 0) / max(1, ack.get('kaudit_bridge_kafka_ack_seconds_count', 0)) * 1000:.0f} ms "
          "on average per batch")  # fmt: skip
    by_part = Counter(min(ps) for ps in landed.values())
    predicted = spread(clusters, s.raw_partitions)
    moved = [c for c, ps in landed.items() if ps != {librdkafka_partition(c.encode(), s.raw_partitions)}]
    print(f"clusters: raw partitions: {dict(sorted(by_part.items()))} clusters per partition "
          f"(CRC-32 predicts {dict(sorted(predicted.items()))}; {len(moved)} clusters elsewhere than predicted, "
          f"{sum(len(ps) > 1 for ps in landed.values())} on more than one partition)")  # fmt: skip
    print("clusters: RSS after the run: " + ", ".join(f"{n} {b / 2**20:.0f} MiB" for n, b in rss.items())
          + "; CPU s during the load: " + ", ".join(f"{n} {cpu1[n] - cpu0[n]:.1f}" for n in pids))  # fmt: skip
    print(f"clusters: tokens file of {len(clusters):,} hashed tokens parsed+installed in {t_parse * 1000:.1f} ms, "
          f"readers file of {len(clusters):,} readers in {r_parse * 1000:.1f} ms; every token rotated in the file -> "
          f"accepted by the running bridge after {rot:.2f} s (polled each 1 s)")  # fmt: skip
    print(f"clusters: per-request token lookup among {len(clusters):,}: bridge {us_bridge:.1f} us, readers {us_readers:.1f} us "
          f"(digest dict; the previous scan of every digest: {us_scan:.1f} us)")  # fmt: skip
    return 0 if not wrong and not extra and not problems and not moved else 1


if __name__ == "__main__":
    sys.exit(main())
