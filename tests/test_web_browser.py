"""The dashboard in headless Chromium (Debian's `chromium`, driven by Playwright; no downloaded browser):
widgets show the numbers computed here from the sample events, a 403 drills down to its event and to the
RBAC suggestion, the query box runs a query, the pickers change the view. Screenshots go to test-artifacts/."""

from __future__ import annotations

import importlib.util
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_web_support import Loaded, ServerThread, loaded  # noqa: F401 - fixtures

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARTIFACTS = REPO / "test-artifacts"
HAS_QUERY_API = importlib.util.find_spec("pipeline.warehouse.api") is not None

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not found (apt-get install -y chromium); browser tests need it"
)


@pytest.fixture(scope="module")
def app_url(loaded: Loaded):  # noqa: F811
    """The dashboard as `kaudit serve` builds it (query API included when its module exists)."""
    from pipeline.commands.serve import build_app

    srv = ServerThread(build_app(loaded.settings, loaded.warehouse))
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # the page runs under the Content-Security-Policy of pipeline/access/browser.py: anything it blocks is a bug
    pg.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors: {errors}"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


def table_counts(page, table: str) -> dict[str, int]:
    rows = page.locator(f"[data-table={table}] tbody tr")
    out = {}
    for i in range(rows.count()):
        r = rows.nth(i)
        out[r.get_attribute("data-key")] = int(r.locator("td.num").inner_text().replace(",", ""))
    return out


def test_widgets_show_the_right_numbers(page, app_url, loaded):  # noqa: F811
    page.goto(f"{app_url}/#/dashboard?since=all")
    page.wait_for_selector("[data-table=actions] tfoot [data-total]")
    page.wait_for_selector("#chart-actions")
    assert table_counts(page, "actions") == dict(Counter(e["verb"] for e in loaded.events))
    assert page.locator("[data-table=actions] tfoot [data-total]").inner_text() == "962"
    codes = Counter(str(e["responsestatus_code"]) for e in loaded.events if e["responsestatus_code"])
    assert table_counts(page, "status") == dict(codes)
    users = table_counts(page, "users")
    assert users["system:admin"] == 757 and len(users) == 10
    assert table_counts(page, "resources")["roles"] == sum(
        e["objectref_resource"] == "roles" for e in loaded.events
    )
    assert table_counts(page, "sourceips")["::1"] == sum("::1" in e["sourceips"] for e in loaded.events)
    denied = page.locator("[data-table=denied] tbody tr[data-as=bob]")
    assert denied.get_attribute("data-code") == "403" and denied.locator("td.num").inner_text() == "4"
    rules = table_counts(page, "alerts_by_rule")
    assert rules == dict(Counter(a["rule_id"] for a in loaded.alerts))
    # every widget shows the query that produced it
    assert page.locator("[data-widget=actions] .ql").inner_text().endswith("groupby verb")
    page.wait_for_timeout(300)  # let the charts paint for the screenshot
    shot(page, "dashboard")


def test_click_403_down_to_the_event_and_rbac(page, app_url, loaded):  # noqa: F811
    page.goto(f"{app_url}/#/dashboard?since=all")
    page.click("[data-table=status] tbody tr[data-key='403']")
    page.wait_for_selector("#events-total")
    assert "#/events?" in page.url and "responsestatus_code=403" in page.url
    assert page.locator("#events-total").get_attribute("data-total") == "16"
    assert page.locator("[data-table=events] tbody tr").count() == 16
    assert page.locator("[data-widget=events] .ql").inner_text() == "responsestatus_code=403"
    shot(page, "events-403")
    bob = page.locator("[data-table=events] tbody tr", has_text="as bob").first
    auditid = bob.get_attribute("data-auditid")
    bob.click()
    page.wait_for_selector("pre.json")
    record = page.locator("pre.json").last.inner_text()
    assert auditid in record and '"responsestatus_code": 403' in record and "cannot list" in record
    shot(page, "event-403")
    page.click("#event-rbac")
    page.wait_for_selector("#rbac-yaml")
    assert page.locator("#rbac-total").get_attribute("data-requests") == "4"
    yaml_text = page.locator("#rbac-yaml").inner_text()
    assert "kind: ClusterRole" in yaml_text and "kind: RoleBinding" in yaml_text and "name: bob" in yaml_text
    shot(page, "rbac-bob")


def test_shared_url_and_pickers(page, app_url, loaded):  # noqa: F811
    # a shared drill-down URL opens the same view in a fresh page
    page.goto(f"{app_url}/#/events?since=all&verb=delete&cluster=falco")
    page.wait_for_selector("#events-total")
    expected = sum(e["verb"] == "delete" and e["cluster"] == "falco" for e in loaded.events)
    assert page.locator("#events-total").get_attribute("data-total") == str(expected)
    # cluster picker
    page.goto(f"{app_url}/#/dashboard?since=all")
    page.wait_for_selector("[data-table=actions] tfoot [data-total]")
    page.click("#cluster-button")
    page.check("#cluster-menu input[value=aks]")
    page.wait_for_function("() => location.hash.includes('cluster=aks')")
    page.wait_for_selector("[data-table=actions] tfoot [data-total='24']")
    assert page.locator("#cluster-button").inner_text() == "aks"
    # time picker: the samples are years old, so the last hour is empty
    page.select_option("#range", "1h")
    page.wait_for_function("() => location.hash.includes('since=1h')")
    page.wait_for_selector("[data-widget=actions] .empty")
    # auto-refresh is part of the URL too
    page.select_option("#refresh", "30")
    page.wait_for_function("() => location.hash.includes('refresh=30')")


def test_query_box(page, app_url):
    page.goto(f"{app_url}/#/dashboard?since=all")
    page.wait_for_selector("[data-table=actions]")
    page.fill("#query-input", 'responsestatus_code=403 and verb="list" groupby username')
    page.click("#query-run")
    page.wait_for_function("() => location.hash.startsWith('#/query?')")
    assert "since=all" in page.url
    page.wait_for_selector("#query-count, #query-error")
    shot(page, "query")
    if page.locator("#query-error").count():
        print("QUERY ERROR:", page.locator("#query-error").inner_text())
    if not HAS_QUERY_API:
        assert "not served here" in page.locator("#query-error").inner_text()
        pytest.skip(
            "pipeline.warehouse.api (the /api/query owner) is not installed yet: checked the error path only"
        )
    assert page.locator("#query-count").get_attribute("data-rows") != "0"
    cells = page.locator("[data-table=query] tbody td").all_inner_texts()
    assert "system:admin" in cells


def test_a_widgets_query_is_saved_in_one_click(page, app_url, loaded):  # noqa: F811
    page.goto(f"{app_url}/#/dashboard?since=all")
    page.wait_for_selector("[data-widget=actions] .ql-save")
    page.once("dialog", lambda d: d.accept("actions-by-verb"))
    page.locator("[data-widget=actions] .ql-save").click()
    page.wait_for_function("() => document.getElementById('status').textContent.includes('saved search')")
    rows = loaded.warehouse.query("SELECT name, query, since FROM saved_searches FINAL WHERE NOT deleted", {})[1]
    text = page.locator("[data-widget=actions] .ql").inner_text()
    assert ["actions-by-verb", text, "all"] in rows
    # listed on the Saved page; one click runs it in the query box
    page.goto(f"{app_url}/#/searches")
    page.click("[data-table=searches] tr[data-key=actions-by-verb] a")
    page.wait_for_selector("#query-count")
    assert page.locator("#query-input").input_value() == text
    m = re.fullmatch(r"timeslice (\d+)([dhm]) groupby verb", text)  # the widget's query, as the dashboard chose it
    step = int(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)] * 1_000_000
    want = {(e["request_received_ts"] - e["request_received_ts"] % step, e["verb"]) for e in loaded.events}
    assert int(page.locator("#query-count").get_attribute("data-rows")) == len(want)


def test_cluster_picker_shows_groups_from_the_clusters_file(page, loaded, tmp_path):  # noqa: F811
    from pipeline.commands.serve import build_app

    cf = tmp_path / "clusters.yaml"
    cf.write_text("clusters:\n  falco: {group: security, labels: {env: prod}}\n  openshift: security\n")
    srv = ServerThread(build_app(loaded.settings.model_copy(update={"clusters_file": cf}), loaded.warehouse))
    try:
        page.goto(f"{srv.url}/#/dashboard?since=all")
        page.wait_for_selector("#cluster-menu [data-group=security]", state="attached")
        page.click("#cluster-button")
        assert "falco · security" in page.locator("#cluster-menu").inner_text()
        page.click("#cluster-menu [data-group=security]")
        page.wait_for_function("() => location.hash.includes('cluster=falco%2Copenshift') || location.hash.includes('cluster=falco,openshift')")
    finally:
        srv.stop()


def test_volume_page(page, app_url, loaded):  # noqa: F811
    """The Volume page (static/volume.js): reached from the nav, its totals are the events', the suggestion shows."""
    page.goto(f"{app_url}/#/dashboard?since=all")
    page.click("nav a[data-nav=volume]")
    page.wait_for_selector("#volume-total")
    page.goto(f"{app_url}/#/volume?since=all")
    page.wait_for_selector(f"#volume-total[data-events='{len(loaded.events)}']", timeout=120_000)
    total = page.locator("#volume-total")
    assert int(total.get_attribute("data-events")) == len(loaded.events)
    assert int(total.get_attribute("data-bytes")) == sum(e["event_bytes"] for e in loaded.events)
    assert "of events" in page.locator("#volume-headline").inner_text()
    rows = page.locator("[data-table=volume-top] tr")
    assert rows.count() == 21  # header + top 20
    page.select_option("#volume-by", "user")
    # re-rendered by user alone: user + 5 number columns (by user,verb,resource had 8)
    page.wait_for_function("() => document.querySelectorAll('[data-table=volume-top] tr:first-child th').length === 6",
                           timeout=120_000)  # fmt: skip
    page.click("#volume-suggest")
    page.wait_for_selector("#volume-policy:not([hidden])", timeout=120_000)  # a loaded machine: slack
    assert "kind: Policy" in page.locator("#volume-policy").inner_text()
    shot(page, "volume")
