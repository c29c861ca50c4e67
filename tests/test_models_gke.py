"""GKE Cloud Logging entries (hand-made from Google's published LogEntry/AuditLog schemas, tests/data/handmade/gke/):
the mapping to audit events, what is stated as not recoverable, Pub/Sub envelopes, the rules on the result,
and `kaudit ship --once --format gke` through a real worker and Kafka."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipeline import config
from pipeline.agents import testing as T
from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleSet, load_rules
from pipeline.agents.state import PartitionState
from pipeline.config import Settings
from pipeline.kafka import headers as H
from pipeline.models import native
from pipeline.models.gke import parse_method, parse_resource_name
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import ParseIssue, RawEvent, read_events
from tests.conftest import REPO

GKE = REPO / "tests" / "data" / "handmade" / "gke"
EXPORT = GKE / "log-router-export.jsonl"


def normalized(path: Path) -> list[dict]:
    return [normalize_event(it.event, it.cluster or "fallback") for it in read_events(path.read_bytes()) if isinstance(it, RawEvent)]


def test_method_and_resource_names():
    assert parse_method("io.k8s.core.v1.pods.exec.create") == {
        "verb": "create", "apiGroup": "", "apiVersion": "v1", "resource": "pods", "subresource": "exec"}  # fmt: skip
    assert parse_method("io.k8s.authorization.rbac.v1.clusterrolebindings.create")["apiGroup"] == "rbac.authorization.k8s.io"
    assert parse_method("io.k8s.apps.v1.deployments.patch")["apiGroup"] == "apps"
    assert parse_method("io.k8s.networking.v1.networkpolicies.delete")["apiGroup"] == "networking.k8s.io"
    assert parse_method("com.example.stable.v1beta1.crontabs.list")["apiGroup"] == "stable.example.com"
    assert parse_resource_name("core/v1/namespaces/default/pods/web/exec") == {
        "apiGroup": "", "apiVersion": "v1", "namespace": "default", "resource": "pods", "name": "web", "subresource": "exec"}  # fmt: skip
    assert parse_resource_name("core/v1/namespaces/staging")["namespace"] == "staging"  # as Kubernetes sets it
    assert parse_resource_name("rbac.authorization.k8s.io/v1/clusterroles")["resource"] == "clusterroles"
    assert parse_resource_name("projects/p/zones/z") is None


def test_export_maps_to_audit_events_and_states_what_is_not_recovered():
    items = list(read_events(EXPORT.read_bytes()))
    events = [it for it in items if isinstance(it, RawEvent)]
    issues = [it for it in items if isinstance(it, ParseIssue)]
    assert len(events) == 10 and len(issues) == 2
    assert "not k8s.io" in issues[0].reason and issues[0].line == 11
    evs = normalized(EXPORT)
    assert Counter(e["cluster"] for e in evs) == {"prod-a": 7, "prod-b": 3}  # resource.labels.cluster_name
    by_id = {e["auditid"]: e for e in evs}
    crb = by_id["hm-gke-0004"]
    assert (crb["verb"], crb["objectref_apigroup"], crb["objectref_resource"], crb["objectref_name"]) == (
        "create", "rbac.authorization.k8s.io", "clusterrolebindings", "bob-admin")  # fmt: skip
    assert orjson.loads(crb["request_object"])["roleRef"]["name"] == "cluster-admin"
    assert crb["username"] == "alice@example.com" and crb["sourceips"] == ["34.77.10.20"]
    assert crb["useragent"].startswith("kubectl/") and crb["decision"] == "allow"
    assert crb["request_uri"] == "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/bob-admin"
    assert crb["stage"] == "ResponseComplete" and crb["level"] == ""
    assert crb["annotations"]["gke.kaudit.io/not-recovered"] == "stage,level,groups,uid,impersonation,latency"
    assert crb["annotations"]["gke.kaudit.io/project"] == "kaudit-demo"
    assert crb["stage_ts"] == crb["request_received_ts"]  # one timestamp: no latency
    assert "exec" == by_id["6b1d3e2a-0000-4000-8000-000000000003"]["objectref_subresource"]  # operation.id wins
    denied = by_id["hm-gke-0005"]
    assert denied["responsestatus_code"] == 403 and denied["decision"] == "forbid"  # from the Status response
    assert denied["authorization_verb"] == "list"
    assert by_id["hm-gke-0009"]["responsestatus_code"] == 401  # google.rpc 16
    assert by_id["hm-gke-0010"]["responsestatus_code"] == 409  # google.rpc 10
    ns = by_id["hm-gke-0007"]
    assert (ns["objectref_resource"], ns["objectref_namespace"], ns["objectref_name"]) == ("namespaces", "staging", "staging")
    nrn = by_id["hm-gke-0008"]  # no resourceName: read from the method name
    assert (nrn["objectref_apigroup"], nrn["objectref_resource"], nrn["verb"]) == ("networking.k8s.io", "networkpolicies", "delete")


def test_pubsub_push_and_pull_bodies():
    push = normalized(GKE / "pubsub-push.json")
    assert [(e["cluster"], e["objectref_subresource"], e["username"]) for e in push] == [("prod-a", "exec", "bob@example.com")]
    pull = normalized(GKE / "pubsub-pull.json")
    assert [e["auditid"] for e in pull] == ["hm-gke-0001", "hm-gke-0005"]
    bad = list(read_events(b'{"message": {"data": "not base64!"}, "subscription": "s"}'))
    assert isinstance(bad[0], ParseIssue) and "base64" in bad[0].reason


def test_gke_entries_take_the_python_path_and_the_rules_see_them():
    if native.available():
        assert native.normalize_record(EXPORT.read_bytes(), "c", 262144, True) is None
    proc = Processor(Settings(), RuleSet(load_rules()))
    out = proc.process(PartitionState(0, 900), 0, b"gke-export", EXPORT.read_bytes(), [])
    assert out.n_events == 10 and out.n_bad == 2
    fired = Counter((a.record["cluster"], a.record["rule_id"]) for a in out.alerts)
    for want in [("prod-a", "cluster-admin-binding"), ("prod-a", "pod-exec"), ("prod-a", "secret-read"),
                 ("prod-a", "secret-access-denied"), ("prod-b", "namespace-deleted")]:  # fmt: skip
        assert fired[want] == 1, (want, fired)
    assert fired[("prod-b", "risky-verb")] == 3  # patch, two deletes
    # the same export again: every entry is a duplicate (insertId / operation.id, per cluster)
    again = proc.process(PartitionState(0, 900), 0, b"gke-export", EXPORT.read_bytes(), [])
    assert [a.alert_id for a in again.alerts] == [a.alert_id for a in out.alerts]


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_ship_once_format_gke_through_a_worker(settings: Settings):
    s = settings
    env = T.worker_env(s)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "ship", "--once", "--format", "gke", "--cluster", "gke-export", str(EXPORT)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    raw = T.read_all(s, config.RAW, idle=1.0, timeout=30)
    assert raw and all(dict(m.headers())[H.FORMAT] == b"gke" for m in raw)
    w = T.start_worker(s, "gke")
    try:
        deadline = time.monotonic() + 120
        stored: list = []
        while time.monotonic() < deadline and len(stored) < 10:
            assert w.poll() is None
            batches = T.decode_all("event_batch", T.read_all(s, config.EVENTS, idle=1.0, timeout=20))
            stored = [e for b in batches for e in b["events"]]
            time.sleep(0.5)
        assert Counter(e["cluster"] for e in stored) == {"prod-a": 7, "prod-b": 3}
        stats = T.stats_totals(T.decode_all("verb_stats", T.read_all(s, config.VERB_STATS, idle=1.0)), "verb")
        assert sum(stats.values()) == 10 and {c for (c, _, _) in stats} == {"prod-a", "prod-b"}
        dead = [orjson.loads(m.value()) for m in T.read_all(s, config.DEADLETTER, idle=1.0)]
        # the shipper checks every line with the same reader: the two non-Kubernetes entries are its dead letters
        assert sorted((d["stage"], d["reason"][:15], d["origin"].rsplit(":", 1)[1]) for d in dead) == [
            ("shipper", "GKE log entry: ", "11"), ("shipper", "JSON object is ", "12")]  # fmt: skip
    finally:
        T.stop_worker(w)
