"""The volume rollup (migration 4) and `kaudit volume`: counts and bytes from hand-made events in chDB, equal to
what audit_events holds, shares and the apportioned ClickHouse cost."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from pipeline.agents.rules import example_event
from pipeline.models.normalize import normalize_event
from pipeline.volume import VolumeError, Window, parse_by, parse_since, report
from pipeline.volume.source import inline
from pipeline.volume.text import render
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS

HOUR = 1_767_225_600  # 2026-01-01 00:00 UTC (an hour boundary)


def ev(n: int, user: str, verb: str, resource: str, *, t: int = HOUR + 60, code: int = 200, stage: str = "ResponseComplete",
       level: str = "Metadata", uri: str | None = None, obj: Any = None, **over: Any) -> dict[str, Any]:  # fmt: skip
    stamp = f"2026-01-01T{(t - HOUR) // 3600:02d}:{(t % 3600) // 60:02d}:{t % 60:02d}.000000Z"
    raw = example_event({
        "auditID": f"a-{n}", "stage": stage, "level": level, "verb": verb, "user": {"username": user, "groups": ["system:authenticated"]},
        "objectRef": {"resource": resource, "namespace": "ns", "apiVersion": "v1"} if resource else None,
        "requestURI": uri or f"/api/v1/namespaces/ns/{resource}", "responseStatus": {"code": code},
        "requestReceivedTimestamp": stamp, "stageTimestamp": stamp, **({"responseObject": obj} if obj is not None else {}),
        **over,
    }, n)  # fmt: skip
    if not resource:
        raw.pop("objectRef")
    return raw


def insert(client, raws: list[dict[str, Any]], cluster: str = "c1") -> list[dict[str, Any]]:
    rows, out = [], []
    for i, raw in enumerate(raws):
        e = normalize_event(raw, cluster)
        e["source_id"] = f"0:{i}"
        out.append(e)
        rows.append([e[c] for c in EVENT_INSERT_COLUMNS])
    client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
    return out


def runner(client):
    return lambda sql, params: client.query(sql, parameters=params).result_rows


def mix() -> list[dict[str, Any]]:
    """3 service accounts listing/watching pods (big bodies), a node, an admin's writes, probes."""
    raws, n = [], 0
    for sa in ("a", "b", "c"):
        for _ in range(20):
            for verb in ("list", "watch"):
                n += 1
                raws.append(ev(n, f"system:serviceaccount:ctrl:{sa}", verb, "pods", level="RequestResponse",
                               obj={"kind": "PodList", "items": [{"metadata": {"name": "p" * 200}}]}))  # fmt: skip
    for _ in range(10):
        n += 1
        raws.append(ev(n, "system:node:n1", "get", "nodes"))
    for verb in ("create", "delete", "patch"):
        n += 1
        raws.append(ev(n, "alice", verb, "configmaps", level="Request"))
    for path in ("/livez", "/readyz?verbose", "/healthz/etcd"):
        n += 1
        raws.append(ev(n, "system:anonymous", "get", "", uri=path))
    return raws


def test_rollup_holds_what_audit_events_holds(warehouse):
    client, _, _ = warehouse
    stored = insert(client, mix())
    rows = client.query("SELECT sum(events), sum(bytes) FROM volume_1h").result_rows
    assert rows == [(len(stored), sum(e["event_bytes"] for e in stored))]
    assert client.query("SELECT count(), sum(event_bytes) FROM audit_events").result_rows == rows
    # bytes = the events' compact JSON, as the API server sent them
    assert stored[0]["event_bytes"] == len(orjson.dumps(mix()[0]))
    paths = dict(client.query("SELECT request_path, sum(events) FROM volume_1h WHERE request_path != '' GROUP BY 1").result_rows)
    assert paths == {"/livez": 1, "/readyz": 1, "/healthz/etcd": 1}


def test_report_headline_shares_and_cost(warehouse):
    client, _, _ = warehouse
    stored = insert(client, mix())
    client.command("OPTIMIZE TABLE audit_events FINAL")
    rep = report(runner(client), Window(HOUR, HOUR + 3600), parse_by("user,verb"), limit=5)
    total_b = sum(e["event_bytes"] for e in stored)
    assert rep.totals.events == len(stored) == 136 and rep.totals.bytes == total_b
    sa = [e for e in stored if e["username"].startswith("system:serviceaccount:")]
    assert rep.headline == (f"3 service accounts' get/list/watch = {round(100 * len(sa) / len(stored))}% of events, "
                            f"{round(100 * sum(e['event_bytes'] for e in sa) / total_b)}% of bytes")  # fmt: skip
    cats = {c.key["category"]: c for c in rep.categories}
    assert cats["sa-reads"].events == 120 and cats["probes"].events == 3 and cats["writes"].events == 3
    assert cats["node-reads"].events == 10 and cats["sa-reads"].users == 3
    assert rep.top[0].key["verb"] in ("list", "watch") and rep.top[0].events == 20
    assert rep.top[0].share_events == pytest.approx(20 / 136)
    # ClickHouse cost: the parts' compressed bytes, apportioned; all groups together are the whole
    parts = client.query("SELECT sum(data_compressed_bytes) FROM system.parts WHERE active AND database = currentDatabase() "
                         "AND table = 'audit_events'").result_rows[0][0]  # fmt: skip
    assert rep.cost.compressed == parts > 0
    assert sum(c.ch_bytes for c in rep.categories) == pytest.approx(parts, rel=0.01)
    assert cats["sa-reads"].ch_bytes > cats["node-reads"].ch_bytes
    text = render(rep)
    assert "Headline: 3 service accounts' get/list/watch" in text and "system:serviceaccount:ctrl:a" in text


def test_window_and_cluster_filters(warehouse):
    client, _, _ = warehouse
    insert(client, [ev(1, "u", "get", "pods"), ev(2, "u", "get", "pods", t=HOUR + 3 * 3600)], cluster="c1")
    insert(client, [ev(3, "u", "get", "pods")], cluster="c2")
    run = runner(client)
    assert report(run, Window(HOUR, HOUR + 3600)).totals.events == 2
    assert report(run, Window(HOUR, HOUR + 3600, ("c2",))).totals.events == 1
    assert report(run, Window(HOUR, HOUR + 4 * 3600, ("c1",))).totals.events == 2
    assert report(run, Window(HOUR + 7200, HOUR + 9000)).totals.events == 0
    assert "no events in this window" in render(report(run, Window(0, 3600)))


def test_bad_arguments_are_clear_errors():
    assert parse_since("7d") == 7 * 86400 and parse_since("30m") == 1800
    for bad in ("", "7", "-1d", "1y"):
        with pytest.raises(VolumeError, match="--since"):
            parse_since(bad)
    with pytest.raises(VolumeError, match="use any of"):
        parse_by("user,password")
    assert parse_by("username, agent,verb") == ["user", "useragent", "verb"]
    # parameters for the SQL API are ClickHouse literals: quotes and backslashes cannot end the string
    sql = inline("cluster IN {c:Array(String)} AND x = {s:String}", {"c": ["a'b", "c\\"], "s": "'; DROP TABLE x"})
    assert sql == "cluster IN ['a\\'b', 'c\\\\'] AND x = '\\'; DROP TABLE x'"


def test_cli_json_output(warehouse, capsys, monkeypatch):
    client, s, db = warehouse
    insert(client, mix())
    from pipeline import cli
    from pipeline.volume import source

    real = source.warehouse_runner

    def in_db(settings):  # the CLI on this test's database
        settings = settings.model_copy(update={"clickhouse_dsn": s.clickhouse_dsn})
        import contextlib

        @contextlib.contextmanager
        def cm():
            from pipeline.warehouse.reader import Warehouse

            wh = Warehouse(settings, max_workers=1, database=db)
            try:
                yield lambda sql, params: wh.query(sql, params)[1]
            finally:
                wh.close()

        return cm()

    monkeypatch.setattr(source, "warehouse_runner", in_db)
    now = HOUR + 1800
    monkeypatch.setattr("time.time", lambda: now)
    assert cli.main(["volume", "--since", "1h", "--by", "user", "--top", "2", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["events"] == 136 and len(out["top"]) == 2 and out["by"] == ["user"]
    assert cli.main(["volume", "--by", "nope"]) == 2
    assert "use any of" in capsys.readouterr().err
    assert real is not None


def test_exact_window_reads_the_same_groups_from_audit_events(warehouse):
    client, _, _ = warehouse
    insert(client, [ev(1, "u", "get", "pods", t=HOUR + 10), ev(2, "u", "get", "pods", t=HOUR + 100),
                    ev(3, "v", "list", "pods", t=HOUR + 200)])  # fmt: skip
    run = runner(client)
    hourly = report(run, Window(HOUR, HOUR + 3600), ["user"])
    exact_all = report(run, Window(HOUR, HOUR + 3600, exact=True), ["user"])
    assert hourly.totals == exact_all.totals and [g.key for g in hourly.top] == [g.key for g in exact_all.top]
    part = report(run, Window(HOUR + 50, HOUR + 150, exact=True), ["user"])
    assert part.totals.events == 1 and part.top[0].key == {"user": "u"}
    from pipeline.volume import window_from_args

    w = window_from_args("7d", "2026-01-01T00:00:50Z", str(HOUR + 150), ["c1,c2"])
    assert (w.from_s, w.to_s, w.clusters, w.exact) == (HOUR + 50, HOUR + 150, ("c1", "c2"), True)
    with pytest.raises(VolumeError, match="after"):
        window_from_args("7d", str(HOUR), str(HOUR), [])


def test_reconcile_adds_what_the_rollup_lacks(warehouse):
    """An audit_events part whose materialized view part was lost (a killed embedded sink): the sink's restart
    adds exactly the missing counts and bytes, and nothing when nothing is missing."""
    from pipeline.volume.rollup import reconcile_volume

    client, _, _ = warehouse
    stored = insert(client, mix())
    assert reconcile_volume(client) == 0
    client.command("TRUNCATE TABLE volume_1h")
    insert(client, [ev(999, "late", "get", "pods")])  # the MV saw only this one
    assert reconcile_volume(client) == len(stored)
    assert reconcile_volume(client) == 0
    total = client.query("SELECT sum(events), sum(bytes) FROM volume_1h").result_rows[0]
    assert total == client.query("SELECT count(), sum(event_bytes) FROM audit_events").result_rows[0]


def test_the_reports_pass_the_raw_sql_guard(warehouse):
    """Through the query API (the CLI when the sink holds chDB) the statements go through sqlguard with their
    parameters as literals: the same numbers, the cost unknown (system tables are refused), and a reader scoped to
    a cluster sees only that cluster's volume."""
    from pipeline.agents.rules import load_rules
    from pipeline.policy import suggest
    from pipeline.warehouse.reader import Warehouse

    client, s, db = warehouse
    insert(client, mix(), cluster="c1")
    insert(client, [ev(1000 + i, "other", "get", "pods") for i in range(7)], cluster="c2")
    wh = Warehouse(s, max_workers=1, database=db)
    try:
        def via_api(sql, params):
            return wh.sql(inline(sql, params))[1]

        direct = report(runner(client), Window(HOUR, HOUR + 3600), ["user", "verb"])
        guarded = report(via_api, Window(HOUR, HOUR + 3600), ["user", "verb"])
        assert guarded.totals == direct.totals and [g.key for g in guarded.top] == [g.key for g in direct.top]
        assert guarded.headline == direct.headline and guarded.cost.compressed == 0 < direct.cost.compressed
        assert "ClickHouse cost unknown" in render(guarded)
        exact = report(via_api, Window(HOUR, HOUR + 3600, exact=True), ["user"])
        assert exact.totals == direct.totals
        sug = suggest(via_api, Window(HOUR, HOUR + 3600), load_rules(), target=1.0)
        assert sug.totals.events == direct.totals.events and sug.rules
        scoped = wh.sql("SELECT sum(events) FROM volume_1h", clusters=["c2"])[1]
        assert scoped == [[7]]
    finally:
        wh.close()
