"""kaudit notify without Kafka: routing file, payloads, signature, offset tracking, delivery loop semantics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from pipeline.notify import payloads as P
from pipeline.notify.routing import RoutingError, load, parse
from pipeline.notify.service import OffsetTracker, TokenBucket

BASE_ALERT = {
    "alert_id": "a1", "rule_id": "secret-read", "title": "Secret read by a user", "severity": "medium",
    "cluster": "prod-eu", "ts": 1_764_633_600_000_000, "auditid": "11111111-2222", "stage": "ResponseComplete",
    "username": "alice", "usergroups": ["dev"], "impersonated_username": "", "sourceips": ["10.0.0.7"],
    "useragent": "kubectl/v1.34", "verb": "get", "objectref_resource": "secrets", "objectref_subresource": "",
    "objectref_namespace": "payments", "objectref_name": "db-creds", "objectref_apigroup": "", "request_uri": "/api/v1/x",
    "responsestatus_code": 200, "decision": "allow", "decision_reason": "", "window_start": 0, "count": 0,
    "group_key": "", "tags": ["mitre:T1552", "credential-access"], "source_id": "0:1",
}  # fmt: skip

DOC = {
    "dashboard_url": "http://dash.example:8080/",
    "destinations": {
        "am": {"type": "alertmanager", "url": "http://am:9093/", "labels": {"team": "platform"}},
        "chat": {"type": "slack", "url": "https://hooks.example/T/B/X", "channel": "#audit"},
        "siem": {"type": "webhook", "url": "https://siem.example/hook", "secret_env": "SIEM_KEY",
                 "headers": {"Authorization": "Bearer ${SIEM_TOKEN}"}, "group_by": ["cluster"], "rate_per_second": 2},
    },  # fmt: skip
    "routes": [
        {"match": {"min_severity": "high"}, "to": ["am", "chat"]},
        {"match": {"cluster": "prod-*", "labels": {"tag": "mitre:*"}}, "to": ["siem"]},
        {"match": {"rule": ["pod-exec"], "user": "bob"}, "to": ["chat"], "stop": True},
        {"match": {"severity": "low"}, "to": ["am"]},
    ],
    "default": ["am"],
}
ENV = {"SIEM_KEY": "k3y", "SIEM_TOKEN": "tok"}


def test_routing_by_severity_cluster_labels_rule_user_and_stop():
    r = parse(DOC, "t.yaml", ENV)
    assert r.destinations["siem"].headers == {"Authorization": "Bearer tok"}
    assert r.destinations["siem"].secret == b"k3y" and r.destinations["siem"].rate_per_second == 2.0
    assert r.dashboard_url == "http://dash.example:8080"

    def route(**over):
        a = {**BASE_ALERT, **over}
        return r.route(a, P.alert_labels(a))

    assert route() == ["siem"]  # medium, prod-*, a mitre tag
    assert route(severity="critical") == ["am", "chat", "siem"]
    assert route(cluster="dev-1") == ["am"]  # no route matched: default
    assert route(cluster="dev-1", tags=[]) == ["am"]
    assert route(cluster="dev-1", rule_id="pod-exec", username="bob", severity="low") == ["chat"]  # stop: not am
    assert route(cluster="dev-1", rule_id="pod-exec", username="carol", severity="low") == ["am"]
    assert repr(r.destinations["siem"]).count("tok") == 0  # no secrets in logs
    assert r.destinations["chat"].safe_url == "https://hooks.example/..."  # a Slack URL's path is its token
    assert "T/B/X" not in repr(r.destinations["chat"])
    am = parse({"destinations": {"a": {"type": "alertmanager", "url": "https://u:pw@am:9093/x"}}}, "t", {}).destinations["a"]
    assert am.safe_url == "https://am:9093/x"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["destinations"]["am"].update(type="pagerduty"), "destinations.am.type"),
        (lambda d: d["destinations"]["am"].update(url="ftp://x"), "destinations.am.url"),
        (lambda d: d["destinations"]["am"].update(rate_per_second=0), "rate_per_second"),
        (lambda d: d["destinations"]["am"].update(retries=3), "unknown key(s) ['retries']"),
        (lambda d: d["destinations"]["am"].update(labels={"bad-name": "x"}), "labels.bad-name"),
        (lambda d: d["destinations"]["chat"].update(secret_env="SIEM_KEY"), "only webhook destinations sign"),
        (lambda d: d["destinations"]["siem"].update(secret_env="NOPE"), "NOPE is not set"),
        (lambda d: d["destinations"]["siem"]["headers"].update(X="${MISSING}"), "MISSING is not set"),
        (lambda d: d["destinations"]["siem"].update(group_by=["colour"]), "group_by: unknown field"),
        (lambda d: d["routes"].append({"match": {"severity": "urgent"}, "to": ["am"]}), "'urgent' is not one of"),
        (lambda d: d["routes"].append({"match": {"min_severity": "x"}, "to": ["am"]}), "min_severity"),
        (lambda d: d["routes"].append({"match": {"colour": "x"}, "to": ["am"]}), "unknown key(s) ['colour']"),
        (lambda d: d["routes"].append({"to": ["pager"]}), "unknown destination 'pager'"),
        (lambda d: d["routes"].append({"match": {}}), "expected a mapping with 'to'"),
        (lambda d: d.update(default=["nope"]), "default: unknown destination"),
        (lambda d: d.update(destinations={}), "at least one destination"),
    ],
)
def test_routing_errors_name_the_key(change, message):
    import copy

    doc = copy.deepcopy(DOC)
    change(doc)
    with pytest.raises(RoutingError) as err:
        parse(doc, "t.yaml", ENV)
    assert message in str(err.value) and "t.yaml" in str(err.value)


def test_routing_file_errors(tmp_path: Path):
    with pytest.raises(RoutingError, match="No such file"):
        load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("destinations: [")
    with pytest.raises(RoutingError, match="not valid YAML"):
        load(bad)


def test_alertmanager_alert_labels_annotations_and_ends_at():
    r = parse(DOC, "t.yaml", ENV)
    am = r.destinations["am"]
    ev = P.alertmanager_alert(BASE_ALERT, am, r.dashboard_url, 60, now=1_764_633_601.0)
    assert ev["labels"] == {
        "alertname": "secret-read", "rule_id": "secret-read", "severity": "medium", "cluster": "prod-eu", "user": "alice",
        "namespace": "payments", "resource": "secrets", "verb": "get", "kind": "event",
        "tags": "mitre:T1552,credential-access", "alert_id": "a1", "source": "kaudit", "team": "platform",
    }  # fmt: skip
    assert ev["startsAt"] == "2025-12-02T00:00:00.000Z" and "endsAt" not in ev
    assert ev["generatorURL"] == "http://dash.example:8080/#/event?auditid=11111111-2222&cluster=prod-eu"
    a = ev["annotations"]
    assert a["who"] == "alice from 10.0.0.7" and a["where"] == "cluster prod-eu, namespace payments"
    assert a["what"] == "get secrets db-creds (HTTP 200, allow)"
    assert a["summary"].startswith("[medium] Secret read by a user: alice from 10.0.0.7 get secrets db-creds")
    # a threshold alert: endsAt is the window's end, or min_firing_seconds after sending if that is later
    ws = 1_764_633_600_000_000
    th = {**BASE_ALERT, "alert_id": "t1", "window_start": ws, "count": 12, "group_key": "alice"}
    early = P.alertmanager_alert(th, am, r.dashboard_url, 600, now=ws / 1e6 + 1)
    assert early["endsAt"] == P.iso(ws + 600_000_000) and early["labels"]["kind"] == "threshold"
    late = P.alertmanager_alert(th, am, r.dashboard_url, 60, now=ws / 1e6 + 3600)
    assert late["endsAt"] == P.iso(int((ws / 1e6 + 3600 + am.min_firing_seconds) * 1e6))
    assert late["generatorURL"].endswith("/#/events?alert=t1")
    assert "12 matching requests" in late["annotations"]["what"] and "for alice" in late["annotations"]["what"]


def test_slack_text_escapes_control_characters():
    r = parse(DOC, "t.yaml", ENV)
    msg = P.slack_message([{**BASE_ALERT, "username": "<!channel> & co"}], r.destinations["chat"], r.dashboard_url)
    assert "<!channel>" not in msg["text"] and "&lt;!channel&gt; &amp; co" in msg["text"]
    assert msg["channel"] == "#audit"
    assert "<http://dash.example:8080/#/event?auditid=11111111-2222&cluster=prod-eu|Secret read by a user>" in msg["text"]


def test_webhook_signature_verifies_and_rejects_tampering():
    body = orjson.dumps(P.webhook_body([BASE_ALERT], parse(DOC, "t", ENV).destinations["siem"], ""))
    ts = int(time.time())
    sig = P.sign(b"k3y", body, ts)
    assert sig.startswith("sha256=") and P.verify(b"k3y", body, str(ts), sig)
    assert not P.verify(b"k3y", body + b" ", str(ts), sig)
    assert not P.verify(b"other", body, str(ts), sig)
    assert not P.verify(b"k3y", body, str(ts + 1), sig)  # the timestamp is signed
    old = ts - 3600
    assert not P.verify(b"k3y", body, str(old), P.sign(b"k3y", body, old))  # replayed later
    assert P.idempotency_key(["b", "a"]) == P.idempotency_key(["a", "b"])


def test_offset_tracker_commits_up_to_first_unresolved():
    t = OffsetTracker()
    t.add(10, 2)
    t.add(11, 0)
    t.add(12, 1)
    assert t.next_commit is None
    t.resolve(12)
    assert t.next_commit is None  # 10 still owes two destinations
    t.resolve(10)
    assert t.next_commit is None
    t.resolve(10)
    assert t.next_commit == 13 and len(t) == 0
    t.resolve(99)  # unknown offsets (a revoked partition) are ignored
    assert t.next_commit == 13


def test_token_bucket_limits_rate():
    async def go() -> float:
        b = TokenBucket(rate=50, burst=5)
        t0 = time.monotonic()
        for _ in range(15):
            await b.take()
        return time.monotonic() - t0

    assert asyncio.run(go()) >= (15 - 5) / 50 * 0.9  # 10 tokens beyond the burst at 50/s


# ------------------------------------------------------------------------------------------------------------
# One destination's delivery loop against a real HTTP server (tests.alertmanager.Receiver), no Kafka.
class FakeNotifier:
    """What DestinationLoop uses of the Notifier: state, metrics, offset resolution and dead letters."""

    def __init__(self, tmp: Path) -> None:
        from pipeline.notify.metrics import NotifyMetrics
        from pipeline.notify.state import DeliveryState

        self.metrics = NotifyMetrics()
        self.state = DeliveryState(tmp / "state.sqlite")
        self.resolved: list[tuple[int, int]] = []
        self.dead: list[tuple[str, str]] = []

    def resolve(self, partition: int, offset: int) -> None:
        self.resolved.append((partition, offset))

    async def dead_letter(self, alert, offsets, reason: str) -> None:  # noqa: ANN001
        self.dead.append((alert["alert_id"], reason))


def run_loop(tmp: Path, dest_doc: dict, alerts: list[dict], until, timeout: float = 30.0, after_failure: bool = False):  # noqa: ANN001
    """Offer alerts (offsets 0..n-1) to one destination loop (with ``after_failure``: the first, then the rest
    once its first attempt failed); run until ``until(notifier)``; -> notifier."""
    import aiohttp

    from pipeline.notify.senders import Sender
    from pipeline.notify.service import DestinationLoop

    async def go() -> FakeNotifier:
        n = FakeNotifier(tmp)
        await n.state.open()
        dest = parse({"destinations": {"d": dest_doc}}, "t", {}).destinations["d"]
        async with aiohttp.ClientSession() as session:
            loop = DestinationLoop(n, dest, Sender(dest, session, "", {}, 60))  # type: ignore[arg-type]
            task = asyncio.create_task(loop.run())
            for i, a in enumerate(alerts):
                loop.offer(a, (0, i), redelivery=False)
                while after_failure and i == 0 and not loop.failing:
                    await asyncio.sleep(0.02)
            n.full_seen = loop.full  # type: ignore[attr-defined]
            deadline = time.monotonic() + timeout
            while not until(n) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            task.cancel()
        n.counts = await n.state.counts()  # type: ignore[attr-defined]
        await n.state.close()
        return n

    return asyncio.run(go())


def alerts_of(k: int, clusters: int = 1) -> list[dict]:
    return [{**BASE_ALERT, "alert_id": f"id{i}", "cluster": f"c{i % clusters}"} for i in range(k)]


def test_loop_retries_5xx_and_429_then_delivers_grouped(tmp_path: Path):
    from tests.alertmanager import Receiver

    rx = Receiver(script=[503, 429]).start()
    try:
        n = run_loop(tmp_path, {"type": "webhook", "url": rx.url("/h"), "group_by": ["cluster"], "group_max": 2,
                                "retry_initial_seconds": 0.05, "group_wait_seconds": 0.01}, alerts_of(5, 2),
                     lambda n: len(n.resolved) == 5)  # fmt: skip
        hits = rx.snapshot()
    finally:
        rx.stop()
    assert sorted(n.resolved) == [(0, i) for i in range(5)] and n.dead == []
    # 2 failed attempts of the first group, then c0: [id0, id2] [id4] and c1: [id1, id3]
    bodies = [[a["alert_id"] for a in h.json["alerts"]] for h in hits]
    assert bodies[0] == bodies[1] == bodies[2] and len(bodies) == 5
    assert sorted(map(tuple, bodies[2:])) == [("id0", "id2"), ("id1", "id3"), ("id4",)]
    assert [h.headers.get(P.REDELIVERY_HEADER) for h in hits[:3]] == [None, "1", "1"]  # retries are flagged
    assert n.counts == {("d", "delivered"): 5}
    assert n.metrics.requests.labels("d", "retry")._value.get() == 2


def test_loop_dead_letters_rejected_given_up_and_overflow(tmp_path: Path):
    from tests.alertmanager import Receiver, free_port

    rx = Receiver(status=422).start()
    try:
        n = run_loop(tmp_path / "a", {"type": "slack", "url": rx.url("/s")}, alerts_of(3), lambda n: len(n.resolved) == 3)
    finally:
        rx.stop()
    assert sorted(a for a, _ in n.dead) == ["id0", "id1", "id2"]
    assert all("destination d: HTTP 422: rejected by test receiver" in r for _, r in n.dead)
    assert n.counts == {("d", "deadletter"): 3}

    down = f"http://127.0.0.1:{free_port()}/x"  # nothing listens: connection refused
    n = run_loop(tmp_path / "b", {"type": "webhook", "url": down, "give_up_seconds": 0.5, "retry_initial_seconds": 0.1},
                 alerts_of(2), lambda n: len(n.resolved) == 2)  # fmt: skip
    assert len(n.dead) == 2 and all("gave up after" in r for _, r in n.dead)

    n = run_loop(tmp_path / "c", {"type": "webhook", "url": down, "max_pending": 3, "retry_initial_seconds": 5},
                 alerts_of(7), lambda n: len(n.dead) == 3, timeout=10, after_failure=True)  # fmt: skip
    # id0 failed and is retrying; six more to a queue of three while failing: the three oldest are dead-lettered
    assert sorted(a for a, _ in n.dead) == ["id1", "id2", "id3"] and all("max_pending=3" in r for _, r in n.dead)
    assert sorted(n.resolved) == [(0, 1), (0, 2), (0, 3)]


def test_loop_healthy_but_busy_destination_never_overflows(tmp_path: Path):
    from tests.alertmanager import Receiver

    rx = Receiver().start()
    try:
        n = run_loop(tmp_path, {"type": "webhook", "url": rx.url("/h"), "max_pending": 3, "group_max": 2,
                                "group_wait_seconds": 0.01}, alerts_of(12), lambda n: len(n.resolved) == 12)  # fmt: skip
    finally:
        rx.stop()
    assert n.dead == [] and n.full_seen  # the Notifier pauses reading on `full` instead
    assert sorted(a["alert_id"] for h in rx.snapshot() for a in h.json["alerts"]) == sorted(f"id{i}" for i in range(12))
