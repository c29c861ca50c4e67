"""Rules with memory through real worker processes and a real Kafka broker: two workers, a rebalance, a SIGKILL
mid-stream and a restart give exactly the alerts one uninterrupted in-process run gives (same ids, same
content), with the memory rebuilt from the k8s-audit-memory topic."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from pipeline import config
from pipeline.agents import testing as T
from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleSet, load_rules
from pipeline.agents.state import PartitionState
from pipeline.config import Settings
from tests.test_agents_memory import MEMORY_RULES, history_stream


def user_rules(tmp: Path) -> Path:
    """A user rules file that fills the cluster-networks list (the shipped one is empty), so that the
    sequence rule using it runs in the workers too."""
    (tmp / "nets.txt").write_text("10.0.0.0/8\n192.168.0.0/16\n")
    f = tmp / "rules.yaml"
    f.write_text("lists: {cluster-networks: nets.txt}\nrules: []\n")
    return f

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


def expected_alerts(streams: dict[str, list[bytes]], rules_file: Path) -> dict[str, tuple[str, str, str]]:
    """alert_id -> (rule, group_key, auditid) of one uninterrupted run per cluster (a cluster is one partition)."""
    proc = Processor(Settings(), RuleSet(load_rules(rules_file)))
    out: dict[str, tuple[str, str, str]] = {}
    for cluster, records in streams.items():
        st = PartitionState(0, 900)
        for i, rec in enumerate(records):
            for a in proc.process(st, i, cluster.encode(), rec, []).alerts:
                if a.record["rule_id"] in MEMORY_RULES:
                    out[a.alert_id] = (a.record["rule_id"], a.record["group_key"], a.record["auditid"])
    return out


def memory_alerts(s: Settings) -> tuple[dict[str, tuple[str, str, str]], int]:
    got: dict[str, tuple[str, str, str]] = {}
    n = 0
    for a in T.decode_all("alert", T.read_all(s, config.ALERTS, idle=1.0, timeout=30)):
        if a["rule_id"] in MEMORY_RULES:
            n += 1
            v = (a["rule_id"], a["group_key"], a["auditid"])
            assert got.setdefault(a["alert_id"], v) == v  # a replay re-emits identical content
    return got, n


def wait_for(s: Settings, want: dict, procs: list, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"worker exited with {p.returncode}; see its log under {s.var}"
        got, _ = memory_alerts(s)
        if set(got) >= set(want):
            return
        time.sleep(1.0)


def test_memory_rules_exact_under_rebalance_kill_and_restart(settings: Settings, tmp_path: Path):
    s = settings
    rules = user_rules(tmp_path)
    streams = {f"m{i}": history_stream(seed=100 + i, n_records=30) for i in range(4)}
    want = expected_alerts(streams, rules)
    assert "sa-token-then-outside-use" in {v[0] for v in want.values()}
    assert len(want) > 20
    half = [T.raw_record(c, rec) for c, recs in streams.items() for rec in recs[:15]]
    rest = [T.raw_record(c, rec) for c, recs in streams.items() for rec in recs[15:]]
    T.produce(s, half)
    want_half = expected_alerts({c: recs[:15] for c, recs in streams.items()}, rules)
    a = T.start_worker(s, "ma", "--rules", str(rules))
    b = None
    try:
        wait_for(s, want_half, [a])
        b = T.start_worker(s, "mb", "--rules", str(rules))  # rebalance
        time.sleep(1.0)
        a.send_signal(signal.SIGKILL)  # offsets of its last second are not committed: replayed by whoever takes over
        a.wait(10)
        T.produce(s, rest)  # needs the memory of the first half (learning periods, terms, sequence starts)
        a = T.start_worker(s, "ma", "--rules", str(rules))
        wait_for(s, want, [a, b])
        time.sleep(3.0)  # anything late would be an extra alert
        got, n = memory_alerts(s)
        assert got == want
        # the memory topic carries every change on the raw partition's number, with its source
        mem = T.read_all(s, config.MEMORY, idle=1.0, timeout=30)
        # the restarted worker (and the one that took over partitions) rebuilt memory from that topic
        logs = (Path(s.var) / "worker-ma.log").read_text() + (Path(s.var) / "worker-mb.log").read_text()
        rebuilt = re.findall(r"memory rebuilt from \S+ \((\d+) records", logs)
        assert rebuilt and max(int(x) for x in rebuilt) > 0, [ln for ln in logs.splitlines() if "rebuil" in ln or "memory" in ln or "Traceback" in ln or "Error" in ln][:20]
        assert mem and all(m.headers() and dict(m.headers())["kaudit-source-id"].decode().split(":")[0] == str(m.partition()) for m in mem)
    finally:
        for p in (a, b):
            if p is not None:
                T.stop_worker(p)


def test_seed_from_warehouse_then_worker_uses_it(settings: Settings):
    """A backfill's stored events seed the memory: the worker then knows the cluster is past learning and which
    users already read Secrets, so only the new reader alerts (without the seed, learning would hold both)."""
    import random

    from pipeline.agents.seed import seed_memory
    from pipeline.models.normalize import normalize_event
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.web.sampledata import insert_events
    from tests.test_agents_memory import DAY, event

    s = settings
    rng = random.Random(4)
    now = time.time_ns() // 1000
    stored = []
    for d in range(10, 0, -1):
        for u in ("u0", "u1", "u2"):
            rec = normalize_event(event(rng, now - d * DAY, u, "read"), "seeded")
            rec["source_id"] = f"backfill:{d}:{u}"
            stored.append(rec)
    client = open_client(s)
    migrate(client, s)
    insert_events(client, stored)
    client.close()
    written = seed_memory(s, RuleSet(load_rules()), now - 30 * DAY, now)
    assert sum(written.values()) > 3 and len(written) == 1
    T.produce(s, [T.raw_record("seeded", T.eventlist([event(rng, now, "u1", "read"), event(rng, now, "u9", "read")]))])
    w = T.start_worker(s, "seed")
    try:
        deadline = time.monotonic() + 120
        got: dict = {}
        while time.monotonic() < deadline and not got:
            assert w.poll() is None
            got, _ = memory_alerts(s)
            time.sleep(1.0)
        time.sleep(2.0)
        got, _ = memory_alerts(s)
        assert sorted(v[:2] for v in got.values()) == [("first-secret-read", "u9")]
        raw = T.read_all(s, config.RAW, idle=1.0, timeout=30)
        assert [m.partition() for m in raw] == list(written)  # the seed went where the raw record went
    finally:
        T.stop_worker(w)
