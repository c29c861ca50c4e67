"""Query alerts end to end: the real sink process (embedded chDB; it owns the warehouse and evaluates the alerts)
on the real Kafka broker. Events go in through the events topic, the alert is saved through the sink's API
(`kaudit alert add`), and the alerts are read back from the alerts topic and the alerts table: one alert per group
on the first tick after the events are stored, none for a group under the threshold, `--for 2` one tick later,
nothing again after the sink (and so the evaluator) is killed and restarted while the condition still holds, and
one resolved alert per group when the events leave the window. Unit-level: the tick arithmetic and metrics."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from pipeline import config
from pipeline.kafka.producer import make_producer
from pipeline.models.avro import decode_record
from pipeline.query.execute import ExecError
from pipeline.sinks.fixtures import produce_source, sample_sources
from tests.conftest import REPO, SAMPLES
from tests.test_sinks_kafka import free_port, sink_env, sql, start_sink, stop

EVERY, WINDOW = 10, 20
TEMPLATE = next(e for _c, evs in sample_sources(SAMPLES) for e in evs if e["responsestatus_code"] == 403)


def denied(user: str, n: int, t_us: int) -> list[dict]:
    return [{**TEMPLATE, "cluster": "prod", "username": user, "auditid": str(uuid.uuid4()), "stage": "ResponseComplete",
             "responsestatus_code": 403, "request_received_ts": t_us + i, "stage_ts": t_us + i + 1000}
            for i in range(n)]  # fmt: skip


def alert_cli(s, port: int, *args: str) -> subprocess.CompletedProcess:
    env = {**sink_env(s, port), "KAUDIT_API_URL": f"http://127.0.0.1:{port}"}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "alert", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


class AlertTopic:
    def __init__(self, s) -> None:
        self.c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                           "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
        self.c.subscribe([s.topic(config.ALERTS)])
        self.got: list[dict] = []

    def poll(self, seconds: float) -> list[dict]:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            m = self.c.poll(0.2)
            if m is not None and not m.error():
                rec = decode_record("alert", m.value(), m.headers())
                assert m.key().decode() == rec["alert_id"]
                assert dict(m.headers())["kaudit-source-id"] == rec["rule_id"].encode()
                self.got.append(rec)
        return self.got

    def wait(self, pred, timeout: float = 90) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for rec in self.got:
                if pred(rec):
                    return rec
            self.poll(0.5)
        raise AssertionError(f"no such alert in {timeout}s; got {self.got}")


def wait_port(port: int, proc, log: Path) -> None:
    for _ in range(300):
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            sql(port, "SELECT 1")
            return
        except ExecError:
            time.sleep(0.2)
    raise AssertionError(log.read_text()[-3000:])


@pytest.mark.kafka
def test_query_alert_end_to_end_exactly_once_across_a_restart(settings, tmp_path):
    s, port, log = settings, free_port(), tmp_path / "sink.log"
    proc = start_sink(s, port, log)
    topic = AlertTopic(s)
    try:
        wait_port(port, proc, log)
        r = alert_cli(s, port, "add", "denied", "--every", f"{EVERY}s", "--window", f"{WINDOW}s", "--when",
                      "count > 20", "responsestatus_code=403 groupby username")  # fmt: skip
        assert r.returncode == 0, r.stderr
        r = alert_cli(s, port, "add", "denied-for-2", "--every", f"{EVERY}s", "--window", f"{WINDOW}s", "--when",
                      "count > 20", "--for", "2", "--severity", "high", "responsestatus_code=403 groupby username")  # fmt: skip
        assert r.returncode == 0, r.stderr
        bad = alert_cli(s, port, "add", "x", "--every", "10s", "--when", "count >", "groupby username")
        assert bad.returncode == 2 and "expected a number" in bad.stderr
        assert "denied-for-2" in alert_cli(s, port, "list").stdout
        # let the evaluator skip its first tick (it may be a predecessor's), then store the events just after a
        # tick, so that they are visible before the next one: both searches then first see them on the same tick
        # (rows landing between the two searches' evaluations of one tick would let one see them a tick earlier)
        time.sleep(EVERY + 1)
        time.sleep(EVERY - time.time() % EVERY + 0.5)
        t_stored = time.time()
        now_us = time.time_ns() // 1000
        p = make_producer(s)
        produce_source(p, s, 0, "0:1", "prod", denied("mallory", 25, now_us) + denied("bob", 5, now_us))
        p.flush(30)
        while sql(port, "SELECT count() FROM audit_events")[0][0] < 30:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        visible = time.time()
        first = topic.wait(lambda a: a["rule_id"] == "search:denied")
        assert first["group_key"] == "username=mallory" and first["count"] == 25 and first["username"] == "mallory"
        assert first["tags"] == ["query-alert", "firing"] and first["responsestatus_code"] == 0
        assert first["window_start"] == first["ts"] - WINDOW * 1_000_000 and first["ts"] % (EVERY * 1_000_000) == 0
        # the first tick after the events were stored: within one evaluation period of the condition
        assert first["ts"] / 1e6 <= visible + EVERY
        second = topic.wait(lambda a: a["rule_id"] == "search:denied-for-2")
        same_tick = visible // EVERY == t_stored // EVERY and visible % EVERY < EVERY - 0.5
        # --for 2: one tick after the plain search (when the rows appeared mid-tick: at most one)
        allowed = [first["ts"] + EVERY * 1_000_000] if same_tick else [first["ts"], first["ts"] + EVERY * 1_000_000]
        assert second["ts"] in allowed and second["severity"] == "high"
        # kill -9 the sink (and its evaluator) while the condition still holds, and start it again
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc = start_sink(s, port, log)
        wait_port(port, proc, log)
        resolved = topic.wait(lambda a: a["rule_id"] == "search:denied" and "resolved" in a["tags"], timeout=120)
        assert resolved["group_key"] == "username=mallory" and resolved["ts"] / 1e6 > now_us / 1e6 + WINDOW
        topic.wait(lambda a: a["rule_id"] == "search:denied-for-2" and "resolved" in a["tags"])
        topic.poll(EVERY + 2)  # one more tick: nothing else may come
        got = [(a["rule_id"], a["group_key"], a["tags"][1]) for a in topic.got]
        assert sorted(got) == [("search:denied", "username=mallory", "firing"),
                               ("search:denied", "username=mallory", "resolved"),
                               ("search:denied-for-2", "username=mallory", "firing"),
                               ("search:denied-for-2", "username=mallory", "resolved")], got  # fmt: skip
        ids = {a["alert_id"] for a in topic.got}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the sink stores them (once: ReplacingMergeTree on alert_id)
            stored = sql(port, "SELECT alert_id, count() FROM alerts GROUP BY alert_id")
            if {r[0] for r in stored} == ids:
                break
            time.sleep(0.5)
        assert {r[0]: r[1] for r in stored} == dict.fromkeys(ids, 1)
        metrics = _get(port, "/metrics")
        assert 'kaudit_query_alert_evaluations_total{result="ok",search="denied"}' in metrics
        assert "kaudit_query_alert_evaluation_seconds_count" in metrics
        assert alert_cli(s, port, "rm", "denied").returncode == 0
        assert "denied-for-2" in alert_cli(s, port, "list").stdout and "denied " not in alert_cli(s, port, "list").stdout
    finally:
        if proc.poll() is None:
            stop(proc)
        topic.c.close()


class Wh:
    """The Warehouse contract (query, insert) over a test database's client."""

    def __init__(self, client) -> None:
        self.client = client

    def query(self, sql_text, params=None):
        res = self.client.query(sql_text, parameters=params or None)
        return list(res.column_names), [list(r) for r in res.result_rows]

    def insert(self, table, rows, column_names):
        self.client.insert(table, rows, column_names=column_names)


class Producer:
    def __init__(self):
        self.sent = []

    def produce(self, topic, value, key=None, headers=None, on_delivery=None):
        self.sent.append((topic, key))

    def flush(self, _t=None):
        return 0


def _get(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:  # noqa: S310
        return r.read().decode()


def test_a_second_evaluator_and_a_restart_see_the_stored_alert(warehouse, monkeypatch):
    """Two evaluators on one tick, one after the other: the second finds the first's alert stored and produces
    nothing; a restarted one skips the tick its predecessor may have evaluated. No Kafka: a fake producer."""
    from pipeline.config import Settings
    from pipeline.searches.alerts import Evaluator
    from pipeline.searches.store import SavedSearch, Store
    from pipeline.sinks.tables import ALERT_COLUMNS
    from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS

    client, _s, db = warehouse

    wh = Wh(client)
    Store.for_warehouse(wh).save(SavedSearch("d", "responsestatus_code=403 groupby username", alert_every=60,
                                             alert_window=300, alert_when="count > 2"))  # fmt: skip
    t = 1_800_000_000 // 60 * 60  # a tick
    evs = denied("eve", 3, (t - 100) * 1_000_000)
    client.insert("audit_events", [[{**e, "source_id": f"0:{i}"}[c] for c in EVENT_INSERT_COLUMNS]
                                   for i, e in enumerate(evs)], column_names=EVENT_INSERT_COLUMNS)  # fmt: skip
    s = Settings(topic_prefix="x-")
    a, pa = Evaluator(s, wh, Producer(), recent_from_topic=False), Producer()
    a._producer = pa
    assert a.tick(t - 1) > 0 and pa.sent == []  # first sight: the current tick is skipped
    a.tick(t + 0.5)
    assert [k for _t, k in pa.sent if _t == "x-k8s-audit-alerts"] and len(a.produced) == 1
    rec = a.produced[0]
    z = Evaluator(s, wh, Producer(), recent_from_topic=False)  # `alert run --once`: evaluates the current tick at once, and the same id
    z.tick(t + 0.7, skip_current=False)
    assert [r["alert_id"] for r in z.produced] == [rec["alert_id"]]
    row = [dt.datetime.fromtimestamp(rec[c] / 1e6, tz=dt.UTC) if c in ("ts", "window_start") else rec[c]
           for c in ALERT_COLUMNS]  # fmt: skip
    client.insert("alerts", [row], column_names=ALERT_COLUMNS)  # what the sink does with it
    b = Evaluator(s, wh, Producer(), recent_from_topic=False)
    b.tick(t - 1)  # b starts in the period before t: skips it
    b.tick(t + 1)  # then evaluates t: the alert is stored, nothing produced
    assert b._producer.sent == [] and b.produced == []
    a.tick(t + 60.2)  # still holding (window 300 s): no new alert
    assert len(a.produced) == 1
    c = Evaluator(s, wh, Producer(), recent_from_topic=False)
    c.tick(t + 61)
    c.tick(t + 120.1)  # a restarted evaluator: firing read from the table, no second alert
    assert c.produced == []
    c.tick(t + 300.1)  # the events left the window: resolved, once
    assert [r["tags"][1] for r in c.produced] == ["resolved"] and c.produced[0]["group_key"] == "username=eve"
    c.tick(t + 360.1)
    assert len(c.produced) == 1


@pytest.mark.kafka
def test_a_restarted_evaluator_reads_alerts_the_sink_has_not_stored_yet(settings, chdb_session_path):
    """The sink died right after an alert was produced: the alerts table lacks it, the topic has it. A new
    evaluator reads the topic's last minutes and does not alert again."""
    from pipeline.searches.alerts import Evaluator
    from pipeline.searches.store import SavedSearch, Store
    from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS
    from tests.conftest import migrated_database

    with migrated_database(chdb_session_path, "r") as (client, _s, _db):
        wh = Wh(client)
        Store.for_warehouse(wh).save(SavedSearch("r", "responsestatus_code=403 groupby username", alert_every=60,
                                                 alert_window=300, alert_when="count > 2"))  # fmt: skip
        t = int(time.time()) // 60 * 60
        evs = denied("eve", 3, (t - 100) * 1_000_000)
        client.insert("audit_events", [[{**e, "source_id": f"0:{i}"}[c] for c in EVENT_INSERT_COLUMNS]
                                       for i, e in enumerate(evs)], column_names=EVENT_INSERT_COLUMNS)  # fmt: skip
        a = Evaluator(settings, wh)  # a real producer: the alert goes to the test's alerts topic
        a.tick(t - 1)
        a.tick(t + 0.5)
        assert [r["group_key"] for r in a.produced] == ["username=eve"]
        a.stop()
        b = Evaluator(settings, wh)  # nothing in the alerts table: only the topic knows
        b.tick(t + 1)
        b.tick(t + 60.5)
        assert b.produced == [] and b.states["r"].firing == {"username=eve"}
        c = Evaluator(settings, wh, recent_from_topic=False)  # without the topic it would alert again
        c.tick(t + 1)
        c.tick(t + 60.5)
        assert [r["group_key"] for r in c.produced] == ["username=eve"]
