"""Saved searches and the clusters picker through the real query API (aiohttp app of make_app over chDB): save,
list, run, replace and remove; errors as 400 with the column; /api/query with monitor_group/tags from the
clusters file; /api/clusters with groups and labels. Also the store's own validation."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections import Counter
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.searches.store import SavedSearch, SearchError, Store
from pipeline.sinks.fixtures import sample_sources
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS
from tests.conftest import SAMPLES
from tests.test_web_support import ServerThread

EVENTS = [e for _c, evs in sample_sources(SAMPLES) for e in evs]


@pytest.fixture(scope="module")
def api(chdb_session_path, tmp_path_factory):
    from pipeline.warehouse.api import make_app
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.warehouse.reader import Warehouse

    cf = tmp_path_factory.mktemp("cl") / "clusters.yaml"
    cf.write_text("clusters:\n  falco: {group: security, labels: {env: prod, team: payments}}\n"
                  "  openshift: {group: security, labels: {env: prod}}\n  audit2rbac: legacy\n  far-away: other\n")
    dsn = f"chdb://{chdb_session_path}"
    admin = open_client(dsn=dsn)
    db = f"s_{uuid.uuid4().hex[:10]}"
    admin.command(f"CREATE DATABASE {db}")
    s = Settings(clickhouse_dsn=dsn, clusters_file=cf)
    client = open_client(s, database=db)
    migrate(client, s)
    rows = [[{**e, "source_id": f"0:{i}"}[c] for c in EVENT_INSERT_COLUMNS] for i, e in enumerate(EVENTS)]
    client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
    wh = Warehouse(s, database=db)
    srv = ServerThread(make_app(s, wh))
    yield srv.url, client
    srv.stop()
    wh.close()
    admin.command(f"DROP DATABASE IF EXISTS {db}")


def call(base: str, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, payload = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, json.loads(exc.read())
    assert status == expect, payload
    return payload


def test_save_list_run_replace_remove(api):
    base, _client = api
    q = 'responsestatus_code=403 and verb="list" groupby username'
    saved = call(base, "POST", "/api/searches", {"name": "denied-lists", "query": q, "owner": "ana", "since": "all"})
    assert saved["name"] == "denied-lists" and saved["owner"] == "ana" and saved["updated_at"] > 0
    call(base, "POST", "/api/searches", {"name": "falco-only", "query": "count", "owner": "bo", "clusters": ["falco"],
                                         "since": "all"})  # fmt: skip
    names = [s["name"] for s in call(base, "GET", "/api/searches")["searches"]]
    assert names == ["denied-lists", "falco-only"]
    assert [s["name"] for s in call(base, "GET", "/api/searches?owner=bo")["searches"]] == ["falco-only"]
    res = call(base, "GET", "/api/searches/denied-lists/run")
    want = Counter(e["username"] for e in EVENTS if e["responsestatus_code"] == 403 and e["verb"] == "list")
    assert res["columns"] == ["username", "count"] and dict(map(tuple, res["rows"])) == dict(want) and want
    res = call(base, "GET", "/api/searches/falco-only/run")  # the search's clusters scope it
    assert res["rows"] == [[sum(e["cluster"] == "falco" for e in EVENTS)]]
    assert call(base, "GET", "/api/searches/falco-only/run?from=2001-01-01&to=2002-01-01")["rows"] == [[0]]
    # replace: the newest version wins
    call(base, "POST", "/api/searches", {"name": "denied-lists", "query": "verb=get count", "owner": "ana",
                                         "since": "all"})  # fmt: skip
    assert call(base, "GET", "/api/searches/denied-lists")["query"] == "verb=get count"
    assert call(base, "GET", "/api/searches/denied-lists/run")["rows"] == [[sum(e["verb"] == "get" for e in EVENTS)]]
    assert call(base, "DELETE", "/api/searches/denied-lists") == {"deleted": "denied-lists"}
    call(base, "GET", "/api/searches/denied-lists", expect=404)
    call(base, "DELETE", "/api/searches/denied-lists", expect=404)
    assert [s["name"] for s in call(base, "GET", "/api/searches")["searches"]] == ["falco-only"]
    # saved again after a delete: back
    call(base, "POST", "/api/searches", {"name": "denied-lists", "query": "count", "since": "all"})
    assert call(base, "GET", "/api/searches/denied-lists")["query"] == "count"


def test_bad_searches_are_400_with_the_column(api):
    base, client = api
    err = call(base, "POST", "/api/searches", {"name": "x", "query": "verb=get groupby usrname"}, expect=400)
    assert "did you mean" in err["error"] and err["column"] == 18 and err["field"] == "query"
    assert call(base, "POST", "/api/searches", {"name": "bad name!", "query": "count"}, expect=400)["field"] == "name"
    assert call(base, "POST", "/api/searches", b"not json".decode(), expect=400)["error"]
    err = call(base, "POST", "/api/searches", {"name": "a1", "query": "groupby username", "alert_every": 60,
                                               "alert_when": "count >"}, expect=400)  # fmt: skip
    assert err["field"] == "when" and "expected a number" in err["error"]
    assert call(base, "POST", "/api/searches", {"name": "a2", "query": "count", "alert_every": 60}, expect=400)["field"] == "when"
    before = client.query("SELECT count() FROM saved_searches").result_rows[0][0]
    call(base, "POST", "/api/searches", {"name": "n", "query": "x' OR 1=1"}, expect=400)
    # wrong types were 500s (a number's .strip(), an int name in a regex, a negative UInt32, int(1e400))
    for bad, field in (({"name": 5, "query": "count"}, "name"), ({"name": "t1", "query": []}, "query"),
                       ({"name": "t2", "query": "count", "since": 5}, "since"),
                       ({"name": "t3", "query": "count", "alert_every": -1}, "alert_every"),
                       ({"name": "t4", "query": "count", "clusters": {"a": 1}}, "clusters")):  # fmt: skip
        assert call(base, "POST", "/api/searches", bad, expect=400)["field"] == field, bad
    assert call(base, "POST", "/api/searches", b'{"name": "t5", "query": "count", "alert_every": 1e400}', expect=400)["error"]
    assert client.query("SELECT count() FROM saved_searches").result_rows[0][0] == before  # nothing stored


def test_query_api_knows_the_clusters_file(api):
    base, _client = api
    groups = {"falco": "security", "openshift": "security", "audit2rbac": "legacy"}
    res = call(base, "GET", "/api/query?q=" + urllib.request.quote('monitor_group="security" count'))
    assert res["rows"] == [[sum(groups.get(e["cluster"]) == "security" for e in EVENTS)]]
    res = call(base, "GET", "/api/query?q=" + urllib.request.quote("groupby monitor_group"))
    assert dict(map(tuple, res["rows"])) == dict(Counter(groups.get(e["cluster"], "") for e in EVENTS))
    res = call(base, "GET", "/api/query?q=" + urllib.request.quote('tags="team:payments" count'))
    assert res["rows"] == [[sum(e["cluster"] == "falco" for e in EVENTS)]]
    call(base, "POST", "/api/searches", {"name": "sec", "query": 'monitor_group="security" count', "since": "all"})
    res = call(base, "GET", "/api/searches/sec/run")
    assert res["rows"] == [[sum(groups.get(e["cluster"]) == "security" for e in EVENTS)]]
    err = call(base, "POST", "/api/searches", {"name": "sec2", "query": 'monitor_group > "a" count'}, expect=400)
    assert "is a name" in err["error"] and err["column"] == 1


def test_clusters_route_lists_groups_and_labels(api):
    base, _client = api
    body = call(base, "GET", "/api/clusters")
    by = {c["name"]: c for c in body["clusters"]}
    assert body["groups"] == ["legacy", "other", "security"]
    assert by["falco"] == {"name": "falco", "group": "security", "labels": {"env": "prod", "team": "payments"}, "seen": True}
    assert by["far-away"]["seen"] is False  # in the file, no events
    assert by["aks"] == {"name": "aks", "group": "", "labels": {}, "seen": True}  # events, not in the file


def test_store_validation_and_versions(warehouse):
    client, _s, _db = warehouse
    st = Store.for_client(client)
    with pytest.raises(SearchError, match="--every is at least"):
        st.save(SavedSearch("a", "count", alert_every=1, alert_when="count > 1"))
    with pytest.raises(SearchError, match="timeslice or before"):
        st.save(SavedSearch("a", "timeslice 1m", alert_every=60, alert_when="count > 1"))
    with pytest.raises(SearchError, match="goes in --when"):
        st.save(SavedSearch("a", "groupby verb having count > 1", alert_every=60, alert_when="count > 1"))
    with pytest.raises(SearchError, match="severity"):
        st.save(SavedSearch("a", "count", severity="urgent"))
    ss = st.save(SavedSearch("a", "responsestatus_code=403", alert_every=60, alert_when="count > 20"))
    assert ss.alert_window == 60  # defaults to one period
    for i in range(3):  # versions written in one microsecond still order
        st.save(SavedSearch("a", f"verb=v{i} count"))
    assert st.get("a").query == "verb=v2 count" and len(st.list()) == 1 and st.list(alerts_only=True) == []


def test_search_cli_on_a_local_warehouse(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "KAUDIT_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'chdb'}", "KAUDIT_API_URL": ""}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "search", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    r = cli("save", "deletes", "verb=delete groupby objectref_resource", "--owner", "ana", "--since", "all")
    assert r.returncode == 0 and "saved deletes" in r.stdout, r.stderr
    r = cli("save", "bad", "verb=delete groupby usrname")
    assert r.returncode == 2 and "did you mean" in r.stderr and "^" in r.stderr
    assert "deletes" in cli("list").stdout and '"owner": "ana"' in cli("show", "deletes").stdout
    r = cli("run", "deletes", "--format", "json")
    assert r.returncode == 0 and r.stdout == ""  # an empty warehouse: no rows
    assert cli("rm", "deletes").returncode == 0 and cli("rm", "deletes").returncode == 1
    assert "deletes" not in cli("list").stdout
