"""Worker integration tests: real Kafka, real `kaudit worker` processes (python -m pipeline.cli worker).

Aggregates are checked against counts computed independently from the input (dedup by (cluster, auditID,
stage)), summing stats rows over distinct source_ids as the sink does."""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipeline import config
from pipeline.agents import testing as T
from pipeline.config import Settings
from pipeline.kafka import headers as H
from tests.conftest import SAMPLES
from tests.test_agents_rules import FALCO_EXPECTED

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


def wait_for_totals(s: Settings, expected: Counter, procs: list, timeout: float = 240.0) -> Counter:
    """Read the verb-stats topic until its totals equal `expected` (or time out); return the last totals."""
    deadline = time.monotonic() + timeout
    got: Counter = Counter()
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"worker exited with {p.returncode}; see its log under {s.var}"
        got = T.stats_totals(T.decode_all("verb_stats", T.read_all(s, config.VERB_STATS, idle=1.0, timeout=20)), "verb")
        if got == expected:
            return got
        time.sleep(1.0)
    return got


def test_samples_through_worker_exact_aggregates_and_alerts(settings: Settings):
    s = settings
    records, ref = [], []
    for f in sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md"):
        # every Falco file is its own cluster (several share auditIDs); other folders are one cluster each
        cluster = f"falco-{f.stem}" if f.parent.name == "falco" else f.parent.name
        events = T.sample_events(f)
        for batch in T.batches(events, 400):
            records.append(T.raw_record(cluster, T.eventlist(batch)))
        ref += [(cluster, e) for e in events]
    T.produce(s, records)
    verbs, codes, n_distinct = T.expected_totals(ref, s.window_seconds)
    assert n_distinct == 964  # 1,001 sample events, 37 repeat a (cluster, auditID, stage) of their cluster

    w = T.start_worker(s, "samples")
    try:
        assert wait_for_totals(s, verbs, [w]) == verbs
        status = T.stats_totals(T.decode_all("status_stats", T.read_all(s, config.STATUS_STATS, idle=1.0)), "code")
        assert status == codes
        batches = T.decode_all("event_batch", T.read_all(s, config.EVENTS, idle=1.0))
        stored = [(b["cluster"], e["auditid"], e["stage"]) for b in batches for e in b["events"]]
        assert len(stored) == len(set(stored)) == n_distinct
        # the 2017 backfill (audit2rbac) lands in 2017 windows
        assert any(ws < 1_600_000_000_000_000 for (_, ws, _) in verbs)

        alert_msgs = T.read_all(s, config.ALERTS, idle=2.0)
        alerts = T.decode_all("alert", alert_msgs)
        ids = [a["alert_id"] for a in alerts]
        assert len(ids) == len(set(ids))
        # the sink reads an alert's source from this header instead of decoding the record
        assert [dict(m.headers())[H.SOURCE_ID].decode() for m in alert_msgs] == [a["source_id"] for a in alerts]
        per_file: dict[str, Counter] = {}
        for a in alerts:
            if a["cluster"].startswith("falco-"):
                per_file.setdefault(a["cluster"][6:], Counter())[a["rule_id"]] += 1
        assert {k: dict(v) for k, v in per_file.items()} == FALCO_EXPECTED
        js = T.read_all(s, config.ALERTS_JSON, idle=1.0)
        assert sorted(orjson.loads(m.value())["alert_id"] for m in js) == sorted(ids)
        # every delete/deletecollection/patch became a risky-verb alert
        risky = {(c, e["auditID"]) for c, e in ref if e.get("verb") in ("delete", "deletecollection", "patch")
                 and e.get("stage", "ResponseComplete") in ("ResponseComplete", "Panic")}  # fmt: skip
        assert {(a["cluster"], a["auditid"]) for a in alerts if a["rule_id"] == "risky-verb"} == risky
        alive = Path(s.var) / "worker-samples.alive"
        assert orjson.loads(alive.read_bytes())["totals"]["events"] == len(ref)
    finally:
        assert T.stop_worker(w) == 0  # SIGTERM: clean exit


# ------------------------------------------------------------------------------------------------------------
def synth_event(rng: random.Random, ts_us: int, **over) -> dict:
    verb = rng.choice(["get", "list", "watch", "create", "update", "patch", "delete"])
    code = rng.choice([200, 200, 200, 201, 403, 404, 409])
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts_us // 1_000_000)) + f".{ts_us % 1_000_000:06d}Z"
    ev = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": str(uuid.UUID(int=rng.getrandbits(128))),
        "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/default/pods", "verb": verb,
        "user": {"username": rng.choice(["alice", "bob", "system:serviceaccount:a:b"]), "groups": ["system:authenticated"]},
        "sourceIPs": [f"10.0.0.{rng.randint(1, 9)}"], "objectRef": {"resource": "pods", "namespace": "default", "name": "p"},
        "responseStatus": {"code": code}, "requestReceivedTimestamp": t, "stageTimestamp": t,
    }  # fmt: skip
    ev.update(over)
    return ev


def test_two_workers_kill_restart_replays_late_events_and_poison(settings: Settings):
    s = settings
    rng = random.Random(7)
    now_us = time.time_ns() // 1000
    clusters = [f"c{i}" for i in range(8)]  # spread over the 4 partitions by the key hash
    ref: list[tuple[str, dict]] = []
    phases: list[list[T.RawRecord]] = [[], [], []]
    last: dict[str, list[dict]] = {}
    for phase in range(3):
        for i in range(60):
            cluster = clusters[(phase * 60 + i) % len(clusters)]
            base = now_us - rng.randint(0, 600) * 1_000_000
            if i % 10 == 0:
                base -= 5 * 3600 * 1_000_000  # hours late
            events = [synth_event(rng, base + rng.randint(0, 120_000_000)) for _ in range(rng.randint(20, 120))]
            if i % 7 == 0 and cluster in last:  # apiserver resend: events of an earlier batch in a new batch
                events += last[cluster][:5]
            last[cluster] = events
            rec = T.raw_record(cluster, T.eventlist(events))
            phases[phase].append(rec)
            if i % 9 == 0:  # the same webhook batch delivered twice
                phases[phase].append(T.raw_record(cluster, rec.value))
            ref += [(cluster, e) for e in events]
    # poison: garbage bytes, and a batch with one bad item among good ones
    poison = T.raw_record("c1", b"\x00\xffnot json at all{{{")
    good = synth_event(rng, now_us)
    mixed = T.raw_record("c2", T.eventlist([good, {"verb": "get"}, synth_event(rng, now_us, stage="Bogus")]))
    ref.append(("c2", good))
    skipped = synth_event(rng, now_us)  # the bridge dead-lettered item 0 already: header says skip it
    skip_rec = T.raw_record("c3", T.eventlist([skipped, good | {"auditID": "kept-1"}]), skip_items="0")
    ref.append(("c3", good | {"auditID": "kept-1"}))
    phases[1] += [poison, mixed, skip_rec]
    verbs, codes, n_distinct = T.expected_totals(ref, s.window_seconds)

    T.produce(s, phases[0])
    a = T.start_worker(s, "a")
    b = None
    try:
        # wait until worker a has processed something, then produce more and SIGKILL it mid-stream
        alive = Path(s.var) / "worker-a.alive"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if alive.exists() and any(o >= 0 for o in orjson.loads(alive.read_bytes())["partitions"].values()):
                break
            time.sleep(0.2)
        else:
            pytest.fail("worker a processed nothing within 120 s")
        b = T.start_worker(s, "b")  # joins the group while a is working: rebalance
        time.sleep(2.0)
        T.produce(s, phases[1])
        time.sleep(1.0)
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        T.produce(s, phases[2])
        # replay: the whole first phase delivered again (a bridge retry storm)
        T.produce(s, [T.raw_record(r.cluster, r.value) for r in phases[0]])
        a = T.start_worker(s, "a")
        got = wait_for_totals(s, verbs, [a, b])
        assert got == verbs
        status = T.stats_totals(T.decode_all("status_stats", T.read_all(s, config.STATUS_STATS, idle=1.0)), "code")
        assert status == codes
        # events topic: every distinct event present; duplicates only as whole re-emitted source_ids
        batches = T.decode_all("event_batch", T.read_all(s, config.EVENTS, idle=1.0))
        by_source: dict[str, list] = {}
        for bt in batches:
            keys = [(bt["cluster"], e["auditid"], e["stage"]) for e in bt["events"]]
            assert by_source.setdefault(bt["source_id"], keys) == keys  # a replay re-emits identical content
        stored = [k for keys in by_source.values() for k in keys]
        assert len(stored) == len(set(stored)) == n_distinct
        # dead letters: the garbage record whole, the two bad items singly
        dead = [orjson.loads(m.value()) for m in T.read_all(s, config.DEADLETTER, idle=1.0)]
        reasons = Counter(d["reason"].split(":")[0] for d in dead if d["stage"] == "worker")
        assert reasons["no audit event in raw record"] >= 1
        # not JSON: withheld (it may hold a credential); the raw topic has it at the origin
        assert any(d["withheld"] == 1 and d["data"].startswith("«withheld by kaudit: not JSON") for d in dead)
        assert any(d["reason"] == "missing auditID" for d in dead)
        assert any("unknown stage" in d["reason"] for d in dead)
        # alerts: deduplicated by alert_id they are exactly one per risky event
        alerts = T.decode_all("alert", T.read_all(s, config.ALERTS, idle=1.0))
        risky = {(c, e["auditID"]) for c, e in ref if e["verb"] in ("delete", "patch")}
        unique = {a["alert_id"]: a for a in alerts if a["rule_id"] == "risky-verb"}
        assert {(x["cluster"], x["auditid"]) for x in unique.values()} == risky
    finally:
        for p in (a, b):
            if p is not None:
                T.stop_worker(p)


def test_noise_filter_drops_but_counts(settings: Settings, tmp_path: Path):
    s = settings
    f = tmp_path / "filter.yaml"
    f.write_text("filters:\n  - {name: reads, match: {verb: {in: [get, list, watch]}}, action: drop}\n")
    rng = random.Random(3)
    now_us = time.time_ns() // 1000
    events = [synth_event(rng, now_us - i * 1_000_000) for i in range(300)]
    T.produce(s, [T.raw_record("nf", T.eventlist(b)) for b in T.batches(events, 100)])
    verbs, _, _ = T.expected_totals([("nf", e) for e in events], s.window_seconds)
    w = T.start_worker(s, "nf", "--filter", str(f))
    try:
        assert wait_for_totals(s, verbs, [w]) == verbs
        stats = T.decode_all("verb_stats", T.read_all(s, config.VERB_STATS, idle=1.0))
        dropped = sum(r["dropped"] for rec in stats for r in rec["rows"])
        n_reads = sum(1 for e in events if e["verb"] in ("get", "list", "watch"))
        assert dropped == n_reads > 0
        batches = T.decode_all("event_batch", T.read_all(s, config.EVENTS, idle=1.0))
        assert sum(len(b["events"]) for b in batches) == len(events) - n_reads
        assert sum(len(b["dropped_keys"]) for b in batches) == n_reads
        # rules still saw everything: every delete/patch alerted
        alerts = T.decode_all("alert", T.read_all(s, config.ALERTS, idle=1.0))
        assert {a["auditid"] for a in alerts if a["rule_id"] == "risky-verb"} == {
            e["auditID"] for e in events if e["verb"] in ("delete", "patch")
        }
    finally:
        T.stop_worker(w)


def test_bad_rules_file_is_a_startup_error(settings: Settings, tmp_path: Path):
    import subprocess
    import sys

    f = tmp_path / "rules.yaml"
    f.write_text("rules: [{id: mine, title: T, match: {verb: {inn: [get]}}}]\n")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "worker", "--rules", str(f)], env=T.worker_env(settings),
                       capture_output=True, text=True, timeout=60, cwd=str(T.REPO))  # fmt: skip
    assert r.returncode == 2
    assert "rule 'mine'" in r.stderr and "match.verb.inn" in r.stderr and str(f) in r.stderr


def test_outputs_kafka_refuses_become_a_dead_letter_and_the_rest_goes_on(settings: Settings):
    """The events topic takes records of at most 6,000 bytes: a raw record whose event batch is larger is refused
    by the broker (MESSAGE_TOO_LARGE, no retry can fix it). faust acknowledges a group however its handler ends,
    so the worker must not return before each record's outputs landed or a dead-letter record says why: the
    small records of the same group keep their events, the big one is named by a dead letter, the offsets move
    on and a later record is processed normally."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    s = settings
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    res = ConfigResource(ResourceType.TOPIC, s.topic(config.EVENTS), incremental_configs=[
        ConfigEntry("max.message.bytes", "6000", incremental_operation=AlterConfigOpType.SET)])  # fmt: skip
    for f in admin.incremental_alter_configs([res]).values():
        f.result(30)
    rng = random.Random(11)
    now_us = time.time_ns() // 1000
    small = [[synth_event(rng, now_us)] for _ in range(3)]
    big = [synth_event(rng, now_us, requestURI=f"/api/v1/namespaces/default/pods/{uuid.uuid4()}") for _ in range(400)]
    first = [T.raw_record("one", T.eventlist(small[0])), T.raw_record("one", T.eventlist(big)),
             T.raw_record("one", T.eventlist(small[1]))]  # fmt: skip
    T.produce(s, first, partition_of={"one": 0})
    w = T.start_worker(s, "refused")
    try:
        T.produce(s, [T.raw_record("one", T.eventlist(small[2]))], partition_of={"one": 0})
        want = {e["auditID"] for batch in small for e in batch}
        deadline = time.monotonic() + 120
        got: set[str] = set()
        while time.monotonic() < deadline and got != want:
            assert w.poll() is None, f"worker exited with {w.returncode}; see {s.var}/worker-refused.log"
            got = {e["auditid"] for b in T.decode_all("event_batch", T.read_all(s, config.EVENTS, idle=1.0)) for e in b["events"]}
            time.sleep(1)
        assert got == want  # every small record's events, none of the big one's
        dead = [orjson.loads(m.value()) for m in T.read_all(s, config.DEADLETTER, idle=1.0)]
        refused = [d for d in dead if "refused the outputs" in d["reason"]]
        assert [d["origin"] for d in refused] == [f"{s.topic(config.RAW)}:0:1"]
        assert "MSG_SIZE_TOO_LARGE" in refused[0]["reason"] and refused[0]["cluster"] == "one"
        c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"{s.topic_prefix}kaudit-worker"})
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                committed = c.committed([TopicPartition(s.topic(config.RAW), 0)], timeout=10)[0].offset
                if committed == 4:
                    break
                time.sleep(0.5)
            assert committed == 4  # past the refused record: the partition went on
        finally:
            c.close()
    finally:
        T.stop_worker(w)
