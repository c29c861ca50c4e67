"""The cluster picker with a fleet of 1,000 clusters (one event each in a real chDB warehouse, a clusters file
grouping them by environment): GET /api/dashboard/clusters and /api/clusters search (?q=), cut (?limit=, with
``total`` and ``truncated``) and select a group (?group=); in headless Chromium the picker lists the first 200,
filters as you type (asking the server once its list was cut), keeps selected clusters on top, and a group link
still selects the whole group."""

from __future__ import annotations

import urllib.parse
import uuid
from collections import Counter

import pytest

from pipeline.bench.clusters import ENVS, cluster_names
from tests.test_web_browser import CHROMIUM, browser, page, shot  # noqa: F401 - fixtures
from tests.test_web_support import ServerThread, get

N = 1000
PICK = 200  # the dashboard's PICK_LIMIT (static/app.js)


@pytest.fixture(scope="module")
def fleet(chdb_session_path, tmp_path_factory):
    """A warehouse holding one event for each of 1,000 clusters, and the app with a clusters file (group = env)."""
    from pipeline.commands.serve import build_app
    from pipeline.config import Settings
    from pipeline.samples import SAMPLES
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.warehouse.reader import Warehouse
    from pipeline.web.sampledata import insert_events, sample_events

    dsn = f"chdb://{chdb_session_path}"
    admin = open_client(dsn=dsn)
    db = f"f_{uuid.uuid4().hex[:10]}"
    admin.command(f"CREATE DATABASE {db}")
    folder = tmp_path_factory.mktemp("fleet")
    cf = folder / "clusters.yaml"
    names = cluster_names(N)
    cf.write_text("clusters:\n" + "".join(f"  {n}: {n.split('-')[0]}\n" for n in names))
    s = Settings(clickhouse_dsn=dsn, clusters_file=cf)
    client = open_client(s, database=db)
    migrate(client, s)
    base = sample_events(SAMPLES)[0]
    insert_events(client, [{**base, "cluster": n, "auditid": str(uuid.UUID(int=i + 1))} for i, n in enumerate(names)])
    wh = Warehouse(s, database=db)
    srv = ServerThread(build_app(s, wh))
    yield srv, names
    srv.stop()
    wh.close()
    admin.command(f"DROP DATABASE IF EXISTS {db}")


def test_picker_routes_search_cut_and_group(fleet) -> None:
    srv, names = fleet
    everything = get(srv.url, "/api/dashboard/clusters")
    assert everything["clusters"] == sorted(names) and everything["total"] == N and not everything["truncated"]
    cut = get(srv.url, "/api/dashboard/clusters", limit=PICK)
    assert cut["clusters"] == sorted(names)[:PICK] and cut["total"] == N and cut["truncated"]
    q = "AP-south-1-C"  # any case
    want = sorted(n for n in names if q.lower() in n)
    found = get(srv.url, "/api/dashboard/clusters", q=q, limit=PICK)
    assert found["clusters"] == want and found["total"] == len(want) > 0 and not found["truncated"]
    info = get(srv.url, "/api/clusters", q=q, limit=5)
    assert [c["name"] for c in info["clusters"]] == sorted(want, key=lambda n: (n.split("-")[0], n))[:5]
    assert info["total"] == len(want) and info["truncated"] and info["groups"] == sorted(ENVS)
    stage = get(srv.url, "/api/clusters", group="stage")
    assert sorted(c["name"] for c in stage["clusters"]) == sorted(n for n in names if n.startswith("stage-"))
    assert stage["total"] == N // len(ENVS) and all(c["seen"] and c["group"] == "stage" for c in stage["clusters"])
    assert get(srv.url, "/api/clusters")["total"] == N  # no parameters: everything, as before
    for path in ("/api/dashboard/clusters", "/api/clusters"):
        assert get(srv.url, path, q="no-such-cluster")["clusters"] == []
        for bad in ("0", "x", "10001"):
            assert "limit" in get(srv.url, path, expect=400, limit=bad)["error"]


pytestmark_browser = pytest.mark.skipif(CHROMIUM is None, reason="chromium not found; browser tests need it")


def _hash_clusters(page) -> list[str]:  # noqa: F811
    frag = page.evaluate("() => location.hash")
    qs = urllib.parse.parse_qs(frag.split("?", 1)[1] if "?" in frag else "")
    return [c for c in qs.get("cluster", [""])[0].split(",") if c]


@pytestmark_browser
def test_picker_in_the_browser_with_1000_clusters(page, fleet) -> None:  # noqa: F811
    srv, names = fleet
    page.goto(f"{srv.url}/#/dashboard?since=all")
    page.wait_for_selector("#cluster-more", state="attached")
    page.click("#cluster-button")
    items = page.locator("#cluster-items input[type=checkbox]")
    assert items.count() == PICK
    assert page.locator("#cluster-more").inner_text() == f"{PICK} of 1,000 shown: type to narrow"
    # typing narrows at once and asks the server for what the cut list did not hold
    q = "stage-us-west-2-b"
    want = sorted(n for n in names if q in n)
    assert want and not set(want) & set(sorted(names)[:PICK])  # none of them was loaded: the server must answer
    page.fill("#cluster-search", q)
    page.wait_for_function(f"() => document.querySelectorAll('#cluster-items input[type=checkbox]').length === {len(want)}")
    assert [items.nth(i).get_attribute("value") for i in range(items.count())] == want
    assert page.locator("#cluster-more").count() == 0
    shot(page, "cluster-picker-1000")
    page.check(f"#cluster-items input[value='{want[0]}']")
    page.wait_for_function(f"() => location.hash.includes('cluster={want[0]}')")
    # the label follows the hash on the next render, not in the same task: wait for it rather than read it once
    page.wait_for_function("(w) => document.querySelector('#cluster-button').innerText === w", arg=want[0])
    assert page.locator("#cluster-button").inner_text() == want[0]
    # the selected cluster stays listed (first, checked) whatever the search; the menu stayed open
    page.fill("#cluster-search", "prod-eu-west-1-a")
    page.wait_for_function("() => [...document.querySelectorAll('#cluster-items input')].every((i) => "
                           "i.value.includes('prod-eu-west-1-a') || i.checked)")  # fmt: skip
    first = page.locator("#cluster-items input[type=checkbox]").first
    assert first.get_attribute("value") == want[0] and first.is_checked()
    # widgets follow the selection: one event in that cluster
    page.wait_for_selector("[data-table=actions] tfoot [data-total]")
    page.wait_for_function("() => document.querySelector('[data-table=actions] tfoot [data-total]').innerText === '1'")
    # a group link selects all 250 clusters of the group, whatever the list shows
    page.click("#cluster-menu [data-group=stage]")
    page.wait_for_function("() => location.hash.includes('stage-eu-west-1-a-001')")
    assert sorted(_hash_clusters(page)) == sorted(n for n in names if n.startswith("stage-"))
    assert page.locator("#cluster-button").inner_text().endswith(f"+{N // len(ENVS) - 2}")
    page.wait_for_function(f"() => document.querySelector('[data-table=actions] tfoot [data-total]').innerText === '{N // 4}'")
    assert Counter(n.split("-")[0] for n in _hash_clusters(page)) == {"stage": N // len(ENVS)}

