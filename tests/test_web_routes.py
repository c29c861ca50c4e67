"""Dashboard routes over the real warehouse (chDB) loaded with every sample: each widget's numbers equal
counts computed here in Python from the same events; drill-downs, event records, alerts, errors."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from tests.test_web_support import get, loaded, server  # noqa: F401 - fixtures

ALL = {"since": "all"}


def test_actions_and_status_widgets_match_python_counts(loaded, server):  # noqa: F811
    body = get(server.url, "/api/dashboard/widgets", **ALL)
    w = body["widgets"]
    verbs = Counter(e["verb"] for e in loaded.events)
    assert w["actions"]["totals"] == dict(verbs)
    assert sum(w["actions"]["totals"].values()) == len(loaded.events) == 962
    # the per-bucket series add up to the totals, over a continuous time axis
    for verb, series in w["actions"]["series"].items():
        assert sum(series) == verbs[verb]
        assert len(series) == len(w["actions"]["times"])
    assert set(w["actions"]["highlight"]) >= {"create", "update", "patch", "delete"}
    codes = Counter(str(e["responsestatus_code"]) for e in loaded.events if e["responsestatus_code"])
    assert w["status"]["totals"] == dict(codes)
    assert w["status"]["totals"]["403"] == 16
    assert "groupby verb" in w["actions"]["query"] and "timeslice" in w["actions"]["query"]


def test_top_widgets_match_python_counts(loaded, server):  # noqa: F811
    w = get(server.url, "/api/dashboard/widgets", **ALL)["widgets"]

    def top(counter: Counter, n: int = 10) -> list[dict]:
        return [
            {"key": k, "count": c} for k, c in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
        ]

    assert w["users"]["items"] == top(Counter(e["username"] for e in loaded.events))
    assert w["useragents"]["items"] == top(Counter(e["useragent"] for e in loaded.events))
    assert w["sourceips"]["items"] == top(Counter(ip for e in loaded.events for ip in e["sourceips"]))
    assert w["resources"]["items"] == top(
        Counter(e["objectref_resource"] for e in loaded.events if e["objectref_resource"])
    )
    assert w["users"]["items"][0] == {"key": "system:admin", "count": 757}


def test_denied_and_alert_widgets(loaded, server):  # noqa: F811
    w = get(server.url, "/api/dashboard/widgets", **ALL)["widgets"]
    expected = Counter(
        (e["responsestatus_code"], e["username"], e["impersonated_username"])
        for e in loaded.events
        if e["responsestatus_code"] in (401, 403)
    )
    got = {(r["code"], r["username"], r["impersonated_username"]): r["n"] for r in w["denied"]["rows"]}
    assert got == dict(expected)
    assert got[(403, "system:admin", "bob")] == 4
    by_rule = Counter((a["rule_id"], a["severity"]) for a in loaded.alerts)
    assert {(r["rule_id"], r["severity"]): r["n"] for r in w["alerts_by_rule"]["rows"]} == dict(by_rule)
    assert w["alerts_by_rule"]["rows"][0]["severity"] == "critical"  # most severe first
    assert len(w["recent_alerts"]["rows"]) == 10


def test_cluster_picker_and_filter(loaded, server):  # noqa: F811
    assert get(server.url, "/api/dashboard/clusters")["clusters"] == [
        "aks",
        "audit2rbac",
        "falco",
        "openshift",
    ]
    w = get(server.url, "/api/dashboard/widgets", cluster="falco,aks", **ALL)["widgets"]
    mine = [e for e in loaded.events if e["cluster"] in ("falco", "aks")]
    assert sum(w["actions"]["totals"].values()) == len(mine) == 73


def test_drill_down_403_to_event_record(loaded, server):  # noqa: F811
    page = get(server.url, "/api/dashboard/events", responsestatus_code="403", limit=5, **ALL)
    denied = [e for e in loaded.events if e["responsestatus_code"] == 403]
    assert page["total"] == len(denied) == 16 and len(page["rows"]) == 5
    assert page["query"] == "responsestatus_code=403"
    assert [r["ts_us"] for r in page["rows"]] == sorted(
        (e["request_received_ts"] for e in denied), reverse=True
    )[:5]
    rest = get(server.url, "/api/dashboard/events", responsestatus_code="403", limit=100, offset=5, **ALL)
    assert len(rest["rows"]) == 11
    ids = {r["auditid"] for r in page["rows"] + rest["rows"]}
    assert ids == {e["auditid"] for e in denied}

    bob = get(server.url, "/api/dashboard/events", responsestatus_code="403", username="system:admin",
              impersonated_username="bob", **ALL)  # fmt: skip
    assert bob["total"] == 4 and {r["impersonated_username"] for r in bob["rows"]} == {"bob"}
    assert 'impersonated_username="bob"' in bob["query"]

    rec = get(server.url, "/api/dashboard/event", auditid=bob["rows"][0]["auditid"], cluster="audit2rbac")
    assert rec["records"][-1]["responsestatus_code"] == 403
    assert "cannot list" in rec["records"][-1]["responsestatus_message"]


def test_event_record_has_request_and_response_objects(loaded, server):  # noqa: F811
    ev = next(
        e
        for e in loaded.events
        if e["request_object"] and e["response_object"] and not e["objects_truncated"]
    )
    rec = get(server.url, "/api/dashboard/event", auditid=ev["auditid"], cluster=ev["cluster"])
    stored = next(r for r in rec["records"] if r["stage"] == ev["stage"])
    import orjson

    assert stored["request_object"] == orjson.loads(ev["request_object"])  # parsed back into JSON objects
    assert stored["response_object"] == orjson.loads(ev["response_object"])
    assert stored["annotations"] == ev["annotations"]


def test_drill_downs_for_each_widget_key(loaded, server):  # noqa: F811
    cases = {
        "verb": ("delete", lambda e: e["verb"] == "delete"),
        "objectref_resource": ("pods", lambda e: e["objectref_resource"] == "pods"),
        "sourceip": ("::1", lambda e: "::1" in e["sourceips"]),
        "useragent": ("", lambda e: e["useragent"] == ""),
        "effective_user": ("bob", lambda e: (e["impersonated_username"] or e["username"]) == "bob"),
    }
    for name, (value, pred) in cases.items():
        page = get(server.url, "/api/dashboard/events", limit=1, **{name: value}, **ALL)
        assert page["total"] == sum(1 for e in loaded.events if pred(e)), name


def test_alert_drill_down(loaded, server):  # noqa: F811
    alert = next(a for a in loaded.alerts if a["rule_id"] == "pod-exec-attach") if any(
        a["rule_id"] == "pod-exec-attach" for a in loaded.alerts) else loaded.alerts[0]  # fmt: skip
    page = get(server.url, "/api/dashboard/events", alert=alert["alert_id"])
    assert page["alert"]["rule_id"] == alert["rule_id"]
    assert {r["auditid"] for r in page["rows"]} == {alert["auditid"]}
    get(server.url, "/api/dashboard/events", expect=404, alert="nope")


def test_time_range_bounds(loaded, server):  # noqa: F811
    # absolute range covering only the audit2rbac demo (2017-09-11)
    w = get(
        server.url, "/api/dashboard/widgets", **{"from": "2017-09-11T00:00:00Z", "to": "2017-09-12T00:00:00Z"}
    )
    in_range = [e for e in loaded.events if e["request_received_ts"] // 86_400_000_000 == 17420]
    assert sum(w["widgets"]["actions"]["totals"].values()) == len(in_range) > 700
    assert w["range"]["step_s"] == 900  # 24 h in 15 min buckets
    # the samples are years old: the last hour is empty, not an error
    body = get(server.url, "/api/dashboard/widgets", since="1h")
    w = body["widgets"]
    assert w["actions"]["totals"] == {} and w["users"]["items"] == []
    # ... and the answer says where the stored events are, so the page can offer that range
    first = min(e["request_received_ts"] for e in loaded.events) // 60_000_000 * 60
    last = max(e["request_received_ts"] for e in loaded.events) // 60_000_000 * 60 + 60
    iso = lambda s: datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    assert body["elsewhere"] == {"from": iso(first), "to": iso(last), "events": len(loaded.events)}
    only_aks = [e for e in loaded.events if e["cluster"] == "aks"]
    got = get(server.url, "/api/dashboard/widgets", since="1h", cluster="aks")["elsewhere"]
    assert got["events"] == len(only_aks) > 0
    assert "elsewhere" not in get(server.url, "/api/dashboard/widgets", **ALL)
    assert get(server.url, "/api/dashboard/widgets", since="1h", cluster="no-such")["elsewhere"] is None


def test_bad_input_is_a_clear_400_and_never_sql(loaded, server):  # noqa: F811
    assert "bad duration" in get(server.url, "/api/dashboard/widgets", expect=400, since="yesterday")["error"]
    assert (
        "number"
        in get(server.url, "/api/dashboard/events", expect=400, responsestatus_code="4' OR 1=1")["error"]
    )
    inj = get(server.url, "/api/dashboard/events", username="x' OR 1=1 --", **ALL)
    assert inj["total"] == 0
    assert get(server.url, "/api/dashboard/event", expect=400)["error"]
    assert get(server.url, "/api/rbac", expect=400)["error"].startswith("user is required")


def test_time_bounds_past_what_the_table_holds_are_clamped_not_a_500(loaded, server):  # noqa: F811
    # since=999999999d reached ClickHouse as a bound past 64 bits ("Integer exceeds 64-bit range", a 500)
    huge = get(server.url, "/api/dashboard/widgets", since="999999999d")
    totals = huge["widgets"]["actions"]["totals"]
    assert totals == get(server.url, "/api/dashboard/widgets", **ALL)["widgets"]["actions"]["totals"]
    assert sum(totals.values()) == len(loaded.events)
    assert get(server.url, "/api/dashboard/events", since="99999999999w")["total"] == len(loaded.events)
    assert "after" in get(server.url, "/api/dashboard/events", expect=400, **{"from": "9999999999999999"})["error"]


def test_static_dashboard_is_served_without_cdn(server):  # noqa: F811
    html = get(server.url, "/")
    assert "/static/vendor/chart.umd.min.js" in html and "http" not in html.split("<body>")[0].replace(
        "http-equiv", ""
    )
    js = get(server.url, "/static/vendor/chart.umd.min.js")
    assert "Chart.js v4" in js[:200]
