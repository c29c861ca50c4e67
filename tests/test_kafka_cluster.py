"""A three-broker KRaft cluster (infra/kafka/kafka.sh with KAUDIT_KAFKA_NODES=3, replication factor 3,
min.insync.replicas 2) under load from two bridges, with two workers and a sink: SIGKILL the broker leading a raw
partition, restart it, SIGKILL another; a worker joins and another is killed mid-stream. Every event a bridge
acknowledged is in the warehouse exactly once, the aggregates are exact and each alert is stored once."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from pipeline import config
from pipeline.agents import testing as T
from pipeline.config import Settings
from pipeline.kafka import headers as H
from pipeline.query.execute import ExecError
from tests.test_sinks_kafka import sql, start_sink

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parent.parent
NODES = 3


def free_base() -> int:
    """A base port with base..base+2 (brokers) and base+100..base+102 (controllers) free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randint(30000, 50000)
        ok = True
        for p in [base + i for i in range(NODES)] + [base + 100 + i for i in range(NODES)]:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


class Cluster:
    def __init__(self, var: Path) -> None:
        self.base = free_base()
        self.var = var
        self.env = {
            # the caller's controller port is one broker's (a shared test broker's, say): the cluster picks its own
            **{k: v for k, v in os.environ.items() if k != "KAUDIT_KAFKA_CONTROLLER_PORT"}, "KAUDIT_VAR": str(var), "KAUDIT_KAFKA_NODES": str(NODES), "KAUDIT_KAFKA_PORT": str(self.base),
            "KAUDIT_KAFKA_LIBS": str(REPO / "var/kafka/libs"), "PYTHON": sys.executable,
            "KAUDIT_KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
        }  # fmt: skip
        self.bootstrap = ",".join(f"127.0.0.1:{self.base + i}" for i in range(NODES))

    def run(self, *args: str) -> None:
        out = subprocess.run(["bash", str(REPO / "infra/kafka/kafka.sh"), *args], env=self.env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr

    def kill(self, node: int) -> None:
        pid = int((self.var / "kafka" / f"node-{node}" / "kafka.pid").read_text())
        os.kill(pid, signal.SIGKILL)

    def metadata(self):  # noqa: ANN201
        return AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=20)

    def leader(self, topic: str, partition: int) -> int:
        return self.metadata().topics[topic].partitions[partition].leader

    def wait_full_isr(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            md = self.metadata()
            if all(len(p.isrs) == NODES for t in md.topics.values() if not t.topic.startswith("__")
                   for p in t.partitions.values()):  # fmt: skip
                return
            time.sleep(0.5)
        raise AssertionError("replicas did not catch up")


def event(cluster: str, verb: str, ts: str) -> dict:
    return {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": str(uuid.uuid4()),
            "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/default/pods/p", "verb": verb,
            "user": {"username": "alice", "groups": ["system:authenticated"]}, "sourceIPs": ["10.0.0.1"],
            "objectRef": {"resource": "pods", "namespace": "default", "name": "p", "apiVersion": "v1"},
            "responseStatus": {"code": 200}, "requestReceivedTimestamp": ts, "stageTimestamp": ts}  # fmt: skip


class Load(threading.Thread):
    """Posts batches to the bridges like API servers do: a batch is retried (same body, possibly the other
    bridge) until a 2xx; every tenth is sent again after its 2xx (an apiserver that timed out and resends)."""

    def __init__(self, bridges: list[str], batches: list[tuple[str, list[dict]]], pace: float) -> None:
        super().__init__(daemon=True)
        self.bridges, self.batches, self.pace = bridges, batches, pace
        self.acked: list[dict] = []
        self.errors = Counter()
        self.lock = threading.Lock()
        self.done = threading.Event()

    def post(self, url: str, body: bytes) -> int:
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def send(self, i: int, cluster: str, events: list[dict]) -> None:
        body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events})
        k = i
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            code = self.post(f"{self.bridges[k % len(self.bridges)]}/audit/{cluster}", body)
            if 200 <= code < 300:
                with self.lock:
                    self.acked.extend(events)
                if i % 10 == 0:
                    self.post(f"{self.bridges[(k + 1) % len(self.bridges)]}/audit/{cluster}", body)
                return
            with self.lock:
                self.errors[code] += 1
            k += 1
            time.sleep(0.5)
        raise AssertionError(f"batch {i} never acknowledged")

    def run(self) -> None:
        workers = []
        sem = threading.Semaphore(4)
        for i, (cluster, events) in enumerate(self.batches):
            sem.acquire()

            def go(i: int = i, cluster: str = cluster, events: list = events) -> None:
                try:
                    self.send(i, cluster, events)
                finally:
                    sem.release()

            t = threading.Thread(target=go, daemon=True)
            t.start()
            workers.append(t)
            time.sleep(self.pace)
        for t in workers:
            t.join()
        self.done.set()


def start_bridge(s: Settings, port: int, log: Path) -> subprocess.Popen:
    env = {**T.worker_env(s), "KAUDIT_BRIDGE_ACK_TIMEOUT": "5"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "bridge", "--no-auth", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)  # fmt: skip


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 - loopback
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def where_missing(bootstrap: str, s: Settings, missing: set[str]) -> str:
    """On a mismatch, say where the missing events are: in which raw records (partition, offset, batch id) and
    whether the events topic holds them, and the worker group's committed raw offsets."""
    from confluent_kafka import Consumer, TopicPartition

    if not missing:
        return "nothing missing"
    needles = {m.encode(): m for m in list(missing)[:50]}
    out: list[str] = []
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"diag-{uuid.uuid4().hex}", "enable.auto.commit": False,
                  "enable.partition.eof": True, "isolation.level": "read_committed"})  # fmt: skip
    try:
        for topic in (s.topic(config.RAW), s.topic(config.EVENTS)):
            parts = c.list_topics(topic, timeout=20).topics[topic].partitions
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            left, hits = set(parts), Counter()
            deadline = time.monotonic() + 60
            while left and time.monotonic() < deadline:
                for m in c.consume(500, timeout=1):
                    if m.error():
                        if m.error().code() == -191:  # _PARTITION_EOF
                            left.discard(m.partition())
                        continue
                    v = m.value() or b""
                    found = [n for n in needles if n in v]
                    if found:
                        hdr = {k: (val or b"")[:40] for k, val in (m.headers() or [])}
                        hits[(m.partition(), m.offset(), len(found), str(hdr.get(H.BATCH_ID) or hdr.get(H.SOURCE_ID) or b""))] += 1
            c.unassign()
            out.append(f"{topic}: {sorted(hits)}")
        group = f"{s.topic_prefix}kaudit-worker"
        gc = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        raw = s.topic(config.RAW)
        committed = gc.committed([TopicPartition(raw, p) for p in range(s.raw_partitions)], timeout=20)
        out.append(f"worker group {group} committed: {[(t.partition, t.offset) for t in committed]}")
        gc.close()
    except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the assertion
        out.append(f"diagnostics failed: {exc!r}")
    finally:
        c.close()
    return f"{len(missing)} missing; " + "; ".join(out)


def test_three_brokers_kill_leaders_under_load_nothing_lost_or_doubled(tmp_path: Path):
    cluster = Cluster(tmp_path / "kvar")
    cluster.run("up")
    procs: dict[str, subprocess.Popen] = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        s = Settings(kafka_bootstrap=cluster.bootstrap, var=tmp_path / "var", clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}",
                     kafka_replication_factor=3, kafka_min_insync_replicas=2)  # fmt: skip
        raw = s.topic(config.RAW)
        md = cluster.metadata().topics[raw]
        assert all(len(p.replicas) == NODES for p in md.partitions.values())
        bports = [free_port(), free_port()]
        for i, port in enumerate(bports):
            procs[f"bridge{i}"] = start_bridge(s, port, logs / f"bridge{i}.log")
        api = free_port()
        procs["sink"] = start_sink(s, api, logs / "sink.log")
        procs["worker-a"] = T.start_worker(s, "a", log_dir=logs)
        for port in bports:
            wait_http(f"http://127.0.0.1:{port}/readyz")
        wait_http(f"http://127.0.0.1:{api}/api/health")

        rng = random.Random(5)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        batches = []
        for i in range(240):
            verbs = rng.choices(["get", "list", "create", "update", "delete"], weights=[5, 3, 1, 1, 1], k=40)
            batches.append((f"c{i % 8}", [event(f"c{i % 8}", v, now) for v in verbs]))
        load = Load([f"http://127.0.0.1:{p}" for p in bports], batches, pace=0.2)  # ~48 s of load
        load.start()

        time.sleep(5)
        procs["worker-b"] = T.start_worker(s, "b", log_dir=logs)  # a worker joins mid-stream: rebalance
        time.sleep(3)
        first = cluster.leader(raw, 0)
        cluster.kill(first)  # the leader of raw partition 0, under load
        time.sleep(8)
        procs["worker-a"].send_signal(signal.SIGKILL)  # a worker leaves mid-stream (no clean shutdown)
        cluster.run("node", str(first), "start")
        cluster.wait_full_isr()
        second = next(n for n in (cluster.leader(raw, p) for p in range(s.raw_partitions)) if n != first)
        cluster.kill(second)  # another broker, also leading a raw partition
        load.join(600)
        assert load.done.is_set()
        expected = {(e["auditID"]) for e in load.acked}
        assert len(expected) == sum(len(b) for _, b in batches)  # every batch acknowledged in the end

        deadline = time.monotonic() + 300
        n = -1
        while time.monotonic() < deadline:
            for name, p in procs.items():
                if name != "worker-a":
                    assert p.poll() is None, f"{name} exited; see {logs}"
            try:
                n = sql(api, "SELECT count() FROM audit_events")[0][0]
            except ExecError:
                n = -1
            if n >= len(expected):
                break
            time.sleep(1)
        time.sleep(3)  # anything doubled would show up now
        rows = sql(api, "SELECT count(), uniqExact(auditid) FROM audit_events")[0]
        stored = {r[0] for r in sql(api, "SELECT auditid FROM audit_events")}
        assert rows == [len(expected), len(expected)], (rows, load.errors, where_missing(cluster.bootstrap, s, expected - stored))
        assert stored == expected
        # aggregates exact: per verb, over all windows (distinct auditIDs counted once, like the reference)
        want = Counter(e["verb"] for e in load.acked)
        got = {v: c for v, c in sql(api, "SELECT verb, sum(count) FROM verb_stats GROUP BY verb")}
        assert got == dict(want)
        # alerts once: one risky-verb alert per delete, no alert stored twice
        deletes = want["delete"]
        assert sql(api, "SELECT count(), uniqExact(alert_id) FROM alerts WHERE rule_id = 'risky-verb'")[0] == [deletes, deletes]
        total, distinct = sql(api, "SELECT count(), uniqExact(alert_id) FROM alerts")[0]
        assert total == distinct
        print(f"acknowledged {len(expected)} events; bridge errors during faults: {dict(load.errors)}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        cluster.run("down")
