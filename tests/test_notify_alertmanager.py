"""kaudit notify end to end: real Kafka, a real Alertmanager (built from its Go module), real `kaudit notify`
processes, and test receivers that record what arrives (Alertmanager's webhook receiver, Slack, webhook)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Consumer, TopicPartition

from pipeline import config
from pipeline.agents import testing as T
from pipeline.config import Settings
from pipeline.kafka.producer import make_producer
from pipeline.models.avro import codec
from pipeline.notify import payloads as P
from tests.alertmanager import Receiver, alertmanager_bin, am_alerts, free_port, running_alertmanager  # noqa: F401

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parent.parent
SECRET = "hook-secret-for-tests"


def make_alerts(n: int, now_us: int) -> list[dict[str, Any]]:
    """n distinct alerts: event alerts of three severities and threshold alerts (window in progress)."""
    out = []
    sev = ["medium", "high", "critical", "low"]
    for i in range(n):
        windowed = i % 5 == 0
        out.append({
            "alert_id": f"alert-{i:04d}", "rule_id": "secret-read-burst" if windowed else "secret-read",
            "title": "Burst of secret reads" if windowed else "Secret read", "severity": sev[i % 4],
            "cluster": f"c{i % 3}", "ts": now_us + i, "auditid": f"audit-{i:04d}", "stage": "ResponseComplete",
            "username": f"user{i % 7}", "sourceips": ["10.0.0.1"], "verb": "get", "objectref_resource": "secrets",
            "objectref_namespace": "default", "objectref_name": f"s{i}", "responsestatus_code": 200,
            "window_start": now_us - now_us % 60_000_000 if windowed else 0, "count": 10 if windowed else 0,
            "group_key": f"user{i % 7}" if windowed else "", "tags": ["credential-access"], "source_id": f"0:{i}",
        })  # fmt: skip
    return out


def produce_alerts(s: Settings, alerts: list[dict[str, Any]], garbage: int = 0) -> None:
    c = codec("alert")
    p = make_producer(s)
    topic = s.topic(config.ALERTS)
    for a in alerts:
        p.produce(topic, value=c.encode(a), key=a["alert_id"].encode(), headers=c.headers)
    for i in range(garbage):
        p.produce(topic, value=b"\x00not avro" * (i + 1), key=b"junk", headers=c.headers)
    assert p.flush(30) == 0


def start_notify(s: Settings, routing: Path, tag: str, **env: str) -> subprocess.Popen:
    Path(s.var).mkdir(parents=True, exist_ok=True)
    log = open(Path(s.var) / f"notify-{tag}.log", "ab")  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "notify", "--routing", str(routing)],
        cwd=str(REPO), env=T.worker_env(s, KAUDIT_NOTIFY_DASHBOARD_URL="http://dash.test", **env),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def committed(s: Settings) -> int:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.topic_prefix + "kaudit-notify"})
    try:
        got = c.committed([TopicPartition(s.topic(config.ALERTS), 0)], timeout=10)[0].offset
    finally:
        c.close()
    return max(got, 0)


def wait_until(cond, what: str, procs: list[subprocess.Popen], timeout: float = 180.0, s: Settings | None = None) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        for p in procs:
            assert p.poll() is None, f"notify exited with {p.returncode}; see its log under {s.var if s else '?'}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def am_ids(rx: Receiver) -> Counter:
    """alert_id -> how many times Alertmanager forwarded it to its webhook receiver."""
    return Counter(a["labels"]["alert_id"] for h in rx.snapshot("/am") for a in h.json["alerts"])


def hook_ids(rx: Receiver, path: str) -> list[tuple[str, bool]]:
    return [(a["alert_id"], h.headers.get(P.REDELIVERY_HEADER) == "1") for h in rx.snapshot(path) for a in h.json["alerts"]]


def am_metric(url: str, name: str | None) -> Any:
    """The sum of a metric's samples, or with name None every sample: {(name, sorted labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    samples = [smp for fam in text_string_to_metric_families(text) for smp in fam.samples]
    if name is None:
        return {(smp.name, tuple(sorted(smp.labels.items()))): smp.value for smp in samples}
    return sum(smp.value for smp in samples if smp.name == name)


def write_routing(path: Path, destinations: dict[str, Any], routes: list[dict[str, Any]], default: list[str]) -> Path:
    path.write_text(yaml.safe_dump({"destinations": destinations, "routes": routes, "default": default}))
    return path


def test_exactly_once_per_destination_across_kill_9(settings: Settings, alertmanager_bin: Path, tmp_path: Path):  # noqa: F811
    s = settings
    rx = Receiver().start()  # Alertmanager's webhook receiver (/am), the Slack (/slack) and generic (/hook) webhooks
    n = 300
    alerts = make_alerts(n, time.time_ns() // 1000)
    produce_alerts(s, alerts)
    produce_alerts(s, alerts[:40])  # a worker replaying after a crash re-emits identical alerts (same ids)
    high = {a["alert_id"] for a in alerts if a["severity"] in ("high", "critical")}
    slow = {"rate_per_second": 6, "burst": 1, "group_max": 5, "group_wait_seconds": 0.05}
    with running_alertmanager(alertmanager_bin, tmp_path / "am", rx.url("/am")) as am_url:
        routing = write_routing(tmp_path / "routing.yaml", {
            "am": {"type": "alertmanager", "url": am_url, **slow, "labels": {"env": "test"}},
            "hook": {"type": "webhook", "url": rx.url("/hook"), "secret_env": "HOOK_SECRET", **slow, "group_by": ["cluster"]},
            "chat": {"type": "slack", "url": rx.url("/slack"), **slow},
        }, [{"match": {"min_severity": "high"}, "to": ["chat"]}, {"match": {}, "to": ["am", "hook"]}], [])  # fmt: skip
        env = {"HOOK_SECRET": SECRET}
        w = start_notify(s, routing, "1", **env)
        try:
            wait_until(lambda: len({i for i, _ in hook_ids(rx, "/hook")}) >= n // 3, "a third of the alerts", [w], s=s)
            w.send_signal(signal.SIGKILL)  # mid-stream: requests in flight, offsets not committed
            w.wait(10)
            mid = len({i for i, _ in hook_ids(rx, "/hook")})
            assert mid < n, "the kill came too late to test a restart"
            w = start_notify(s, routing, "2", **env)
            want = {a["alert_id"] for a in alerts}
            wait_until(lambda: set(am_ids(rx)) == want and {i for i, _ in hook_ids(rx, "/hook")} == want
                       and len(rx.snapshot("/slack")) > 0 and committed(s) == n + 40, "every delivery", [w], s=s)  # fmt: skip
            time.sleep(3)  # anything extra (a double delivery) would arrive now
        finally:
            if w.poll() is None:
                w.terminate()
                assert w.wait(60) == 0
        # Alertmanager forwarded each alert id exactly once, across the kill -9 and the duplicate records
        counts = am_ids(rx)
        assert set(counts) == want and set(counts.values()) == {1}, [k for k, v in counts.items() if v != 1]
        # and notify itself posted each alert once, except at most the one group in flight at the kill
        # (a destination sends one request at a time; group_max 5): its delivery state survived kill -9
        received = am_metric(am_url, "alertmanager_alerts_received_total")
        assert n <= received <= n + 5, received
        # what Alertmanager holds: our labels and annotations, endsAt for the windowed alerts
        held = {a["labels"]["alert_id"]: a for a in am_alerts(am_url)}
        assert set(held) == want
        a0 = held["alert-0001"]
        assert {k: a0["labels"][k] for k in ("alertname", "severity", "cluster", "user", "env")} == {
            "alertname": "secret-read", "severity": "high", "cluster": "c1", "user": "user1", "env": "test"}  # fmt: skip
        assert a0["annotations"]["dashboard"] == "http://dash.test/#/event?auditid=audit-0001&cluster=c1"
        assert "user1 from 10.0.0.1" in a0["annotations"]["summary"] and a0["status"]["state"] == "active"
        windowed = held["alert-0005"]
        assert windowed["labels"]["kind"] == "threshold" and windowed["endsAt"] > windowed["startsAt"]
        # the generic webhook: every id, signed; a second copy only ever as a flagged redelivery
        seen: set[str] = set()
        for aid, flagged in hook_ids(rx, "/hook"):
            assert aid not in seen or flagged, f"{aid} delivered twice without the redelivery flag"
            seen.add(aid)
        assert seen == want
        for h in rx.snapshot("/hook"):
            assert P.verify(SECRET.encode(), h.body, h.headers[P.TIMESTAMP_HEADER], h.headers[P.SIGNATURE_HEADER])
        # Slack got the high and critical ones only (their audit or alert ids are in the dashboard links)
        text = "\n".join(h.json["text"] for h in rx.snapshot("/slack"))
        linked = {a["alert_id"] for a in alerts if f"auditid={a['auditid']}&" in text or f"alert={a['alert_id']}|" in text}
        assert linked == high
    rx.stop()


def test_down_destination_blocks_nothing_and_loses_nothing(settings: Settings, alertmanager_bin: Path, tmp_path: Path):  # noqa: F811
    s = settings
    rx = Receiver().start()
    bad = Receiver(status=400).start()  # a destination that rejects everything: dead-letter records say why
    down_port = free_port()  # nothing listens here until the end
    n = 60
    alerts = make_alerts(n, time.time_ns() // 1000)
    produce_alerts(s, alerts, garbage=2)
    fast = {"retry_initial_seconds": 0.2, "retry_max_seconds": 1}
    with running_alertmanager(alertmanager_bin, tmp_path / "am", rx.url("/am")) as am_url:
        routing = write_routing(tmp_path / "routing.yaml", {
            "am": {"type": "alertmanager", "url": am_url},
            "down": {"type": "webhook", "url": f"http://127.0.0.1:{down_port}/later", **fast},
            "bad": {"type": "webhook", "url": bad.url("/bad")},
        }, [], ["am", "down", "bad"])  # fmt: skip
        mport = free_port()
        w = start_notify(s, routing, "1", KAUDIT_NOTIFY_METRICS_PORT=str(mport))
        late = None
        try:
            want = {a["alert_id"] for a in alerts}
            wait_until(lambda: set(am_ids(rx)) == want, "Alertmanager to get every alert while 'down' is down", [w], s=s)
            dead = T.read_all(s, config.DEADLETTER, expect=n + 2, idle=1.0, timeout=60)
            assert committed(s) == 0  # 'down' owes every record: nothing committed, nothing lost
            m = am_metric(f"http://127.0.0.1:{mport}", None)
            assert m[("kaudit_notify_pending_alerts", (("destination", "down"),))] == n
            assert m[("kaudit_notify_destination_up", (("destination", "down"),))] == 0
            assert m[("kaudit_notify_delivered_alerts_total", (("destination", "am"),))] == n
            assert m[("kaudit_notify_deadletter_alerts_total", (("destination", "bad"), ("reason", "rejected")))] == n
            assert m[("kaudit_notify_alerts_consumed_total", ())] == n + 2
            # a restart while 'down' is still down: nothing is sent again to am or bad
            w.terminate()
            assert w.wait(60) == 0
            before_am, before_bad = len(rx.snapshot("/am")), len(bad.snapshot())
            w = start_notify(s, routing, "2")
            time.sleep(5)
            late = Receiver().start(down_port)  # the destination comes back
            wait_until(lambda: {i for i, _ in hook_ids(late, "/later")} == want and committed(s) == n + 2,
                       "the late destination to get everything and the offsets to be committed", [w], s=s)  # fmt: skip
            time.sleep(2)
            assert len(rx.snapshot("/am")) == before_am and len(bad.snapshot()) == before_bad
        finally:
            if w.poll() is None:
                w.terminate()
                assert w.wait(60) == 0
            for r in (rx, bad, late):
                if r is not None:
                    r.stop()
        assert sorted(am_ids(rx).values()) == [1] * n
        got = Counter(i for i, _ in hook_ids(late, "/later"))
        assert set(got) == want and set(got.values()) == {1}  # 'down' was never reached before: no duplicates
        # the rejected alerts and the two undecodable records are dead-letter records, with the reason
        reasons = [orjson.loads(m.value()) for m in dead]
        rejected = [r for r in reasons if "destination bad: HTTP 400" in r["reason"]]
        assert sorted(orjson.loads(r["data"])["alert_id"] for r in rejected) == sorted(want)
        assert all(r["stage"] == "notify" for r in reasons)
        assert sum("undecodable alert record" in r["reason"] for r in reasons) == 2
        assert len(reasons) == n + 2


def test_check_and_bad_routing_file(tmp_path: Path):
    good = write_routing(tmp_path / "r.yaml", {"am": {"type": "alertmanager", "url": "http://127.0.0.1:9"}}, [], ["am"])
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KAUDIT_")}}
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "notify", "--routing", str(good), "--check"],
                         cwd=str(REPO), env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and "destination am: alertmanager http://127.0.0.1:9" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("destinations: {x: {type: fax, url: 'http://a'}}\n")
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "notify", "--routing", str(bad)],
                         cwd=str(REPO), env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "destinations.x.type" in out.stderr and "Traceback" not in out.stderr


def test_burst_larger_than_backlog_is_paced_not_dropped(settings: Settings, tmp_path: Path):
    """A backlog far above max_pending at healthy destinations: reading pauses (back-pressure), nothing is
    dead-lettered, every alert arrives once."""
    s = settings
    rx = Receiver().start()
    n = 3000
    alerts = make_alerts(n, time.time_ns() // 1000)
    produce_alerts(s, alerts)
    small = {"max_pending": 50, "group_max": 20, "group_wait_seconds": 0.01, "rate_per_second": 500, "burst": 50}
    routing = write_routing(tmp_path / "routing.yaml", {
        "hook": {"type": "webhook", "url": rx.url("/hook"), **small},
        "chat": {"type": "slack", "url": rx.url("/slack"), **small, "group_max": 50},
    }, [], ["hook", "chat"])  # fmt: skip
    w = start_notify(s, routing, "burst")
    try:
        wait_until(lambda: committed(s) == n, "every record committed", [w], s=s)
    finally:
        w.terminate()
        assert w.wait(60) == 0
        rx.stop()
    got = Counter(i for i, _ in hook_ids(rx, "/hook"))
    assert set(got) == {a["alert_id"] for a in alerts} and set(got.values()) == {1}
    # a Slack message lists 20 alerts and counts the rest of its group ("... and N more")
    lines = [ln for h in rx.snapshot("/slack") for ln in h.json["text"].split("\n")]
    more = [int(m.group(1)) for ln in lines if (m := re.match(r"\.\.\. and (\d+) more$", ln))]
    assert len(lines) - len(more) + sum(more) == n
    assert T.read_all(s, config.DEADLETTER, idle=1.0, timeout=5) == []
