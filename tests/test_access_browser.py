"""What a web page in someone's browser can do to kaudit (pipeline/access/browser.py), over the real app as
`kaudit serve` builds it and a real bridge with Kafka: a page rebound to 127.0.0.1 reads nothing from open access,
another site's form cannot create a saved search through basic auth or a cookie, a browser cannot write audit
events into a --no-auth bridge, and every answer carries the headers that make injected content inert."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.access.browser import host_name, is_loopback_name
from tests.test_web_support import ServerThread, loaded  # noqa: F401 - fixtures

TOKEN = "browser-test-admin"
QUERY = "/api/query?q=verb%3D%22delete%22+groupby+username&since=all"


def request(url: str, method: str, path: str, *, host: str | None = None, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    """One HTTP request with exactly these headers (http.client lets the Host be anything, as a rebound page's is)."""
    hostport = url.removeprefix("http://")
    conn = http.client.HTTPConnection(hostport, timeout=60)
    h = {"Host": host or hostport, **(headers or {})}
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in h.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = raw
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


@pytest.fixture(scope="module")
def open_site(loaded):  # noqa: F811
    """Open access (no token, no readers file): what `make demo` serves on 127.0.0.1."""
    from pipeline.commands.serve import build_app

    srv = ServerThread(build_app(loaded.settings.model_copy(update={"api_token": "", "api_readers_file": None}),
                                 loaded.warehouse))  # fmt: skip
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def token_site(loaded):  # noqa: F811
    from pipeline.commands.serve import build_app

    srv = ServerThread(build_app(loaded.settings, loaded.warehouse, token=TOKEN))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def basic_site(loaded):  # noqa: F811
    from pipeline.commands.serve import build_app

    srv = ServerThread(build_app(loaded.settings, loaded.warehouse, basic="ops:pw"))
    yield srv
    srv.stop()


def test_host_names() -> None:
    assert [host_name(h) for h in ("127.0.0.1:8080", "[::1]:8080", "LocalHost", "a.example.:443", "::1", "")] == [
        "127.0.0.1", "::1", "localhost", "a.example", "::1", "",
    ]  # fmt: skip
    assert all(map(is_loopback_name, ["localhost", "app.localhost", "127.0.0.1", "127.9.9.9", "::1"]))
    assert not any(map(is_loopback_name, ["evil.example", "127.0.0.1.evil.example", "localhost.evil", "10.0.0.1", ""]))


def test_open_access_answers_only_loopback_names(open_site: ServerThread) -> None:
    """DNS rebinding: the attacker's name resolves to 127.0.0.1, so the request arrives with its Host."""
    port = open_site.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"kaudit.localhost:{port}"):
        status, _, data = request(open_site.url, "GET", QUERY, host=host)
        assert status == 200 and data["rows"], host
    for host in (f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"localhost.evil.example:{port}"):
        for path in (QUERY, "/", "/api/dashboard/widgets?since=all", "/api/searches"):
            status, _, data = request(open_site.url, "GET", path, host=host)
            assert status == 421, (host, path, status)
            assert "rebinding" in data["error"] and "rows" not in data


def test_allowed_hosts_with_a_token(loaded) -> None:  # noqa: F811
    from pipeline.commands.serve import build_app

    s = loaded.settings.model_copy(update={"api_allowed_hosts": "kaudit.example.com, audit.internal"})
    srv = ServerThread(build_app(s, loaded.warehouse, token=TOKEN))
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for host, want in (("kaudit.example.com", 200), ("audit.internal:8443", 200), (f"127.0.0.1:{srv.port}", 200),
                           ("evil.example", 421), ("kaudit.example.com.evil.example", 421)):  # fmt: skip
            assert request(srv.url, "GET", QUERY, host=host, headers=auth)[0] == want, host
    finally:
        srv.stop()


def test_a_token_serves_any_host_name(token_site: ServerThread) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert request(token_site.url, "GET", QUERY, host="kaudit.corp.example", headers=auth)[0] == 200
    assert request(token_site.url, "GET", QUERY, host="kaudit.corp.example")[0] == 401


def saved_names(site: ServerThread, headers: dict[str, str]) -> set[str]:
    status, _, data = request(site.url, "GET", "/api/searches", headers=headers)
    assert status == 200
    return {s["name"] for s in data["searches"]}


@pytest.mark.parametrize("mode", ["basic", "cookie"])
def test_cross_site_writes_are_refused(mode: str, basic_site: ServerThread, token_site: ServerThread) -> None:
    """Credentials the browser sends by itself (basic auth, the kaudit_token cookie) must not let another site's
    page save or delete a search; the dashboard's own fetch (same origin, application/json) still can."""
    site = basic_site if mode == "basic" else token_site
    cred = {"Authorization": "Basic b3BzOnB3"} if mode == "basic" else {"Cookie": f"kaudit_token={TOKEN}"}
    name = f"csrf-{mode}"
    body = json.dumps({"name": name, "query": 'verb="delete"', "owner": "x"}).encode()
    attacks = [
        ({"Origin": "https://evil.example", "Content-Type": "application/json"}, 403),
        ({"Origin": "null", "Content-Type": "text/plain"}, 403),
        ({"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}, 403),
        ({"Sec-Fetch-Site": "same-site", "Content-Type": "application/json"}, 403),
        ({"Content-Type": "text/plain;charset=UTF-8"}, 415),  # a form or a no-cors fetch
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        ({}, 415),  # a Blob body without a type sends no Content-Type at all
    ]
    for extra, want in attacks:
        status, _, data = request(site.url, "POST", "/api/searches", headers={**cred, **extra}, body=body)
        assert status == want, (extra, status, data)
        assert data["error"]
    assert name not in saved_names(site, cred)
    own = {"Origin": site.url, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/json"}
    status, _, data = request(site.url, "POST", "/api/searches", headers={**cred, **own}, body=body)
    assert status == 200, data
    assert name in saved_names(site, cred)
    # a cross-site DELETE is refused too (browsers preflight it, but a guard that relies on them is not one)
    status, _, _ = request(site.url, "DELETE", f"/api/searches/{name}", headers={**cred, "Origin": "https://evil.example"})
    assert status == 403 and name in saved_names(site, cred)
    assert request(site.url, "DELETE", f"/api/searches/{name}", headers=cred)[0] == 200  # the CLI sends no Origin
    assert name not in saved_names(site, cred)


def test_raw_sql_needs_json_too(token_site: ServerThread) -> None:
    body = json.dumps({"sql": "SELECT count() FROM audit_events"}).encode()
    cookie = {"Cookie": f"kaudit_token={TOKEN}"}
    assert request(token_site.url, "POST", "/api/sql", headers={**cookie, "Content-Type": "text/plain"}, body=body)[0] == 415
    status, _, data = request(token_site.url, "POST", "/api/sql", headers={**cookie, "Content-Type": "application/json"},
                              body=body)  # fmt: skip
    assert status == 200 and data["rows"][0][0] > 0


def test_basic_auth_serves_any_host_name(basic_site: ServerThread) -> None:
    assert request(basic_site.url, "GET", QUERY, host="kaudit.corp.example",
                   headers={"Authorization": "Basic b3BzOnB3"})[0] == 200  # fmt: skip
    assert request(basic_site.url, "GET", QUERY, host="kaudit.corp.example")[0] == 401


def test_security_headers_on_every_answer(open_site: ServerThread, token_site: ServerThread) -> None:
    cases = [
        (open_site, "/", 200), (open_site, "/static/app.js", 200), (open_site, QUERY, 200),
        (open_site, "/api/query?q=verb%3D", 400), (token_site, QUERY, 401), (open_site, "/api/nope", 404),
    ]  # fmt: skip
    for site, path, want in cases:
        status, h, _ = request(site.url, "GET", path)
        assert status == want, (path, status)
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY", path
        assert h["referrer-policy"] == "no-referrer", path
        csp = h["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        if path == "/":
            assert "script-src 'self'" in csp
        if path.startswith("/api/"):
            assert h["cache-control"] == "no-store" and csp.startswith("default-src 'none'"), path


@pytest.mark.kafka
def test_a_browser_cannot_write_into_the_bridge(settings: Any, tmp_path: Path) -> None:
    """--no-auth (loopback only): a page on any site can POST to 127.0.0.1 (a typeless Blob needs no preflight), or
    rebind its name to it; an API server never sends Origin or Sec-Fetch-*. With tokens, a browser is refused too."""
    from pipeline import config
    from pipeline.ingest.bridge.threaded import bridge_thread
    from pipeline.ingest.testing import read_topic
    from tests.test_ingest_bridge import EV, TOKENS, eventlist, make_bridge

    body = eventlist(EV)
    with bridge_thread(make_bridge(settings, None)) as url:
        path = "/audit/alpha"
        port = url.rsplit(":", 1)[1]
        attacks = [
            {"Origin": "https://evil.example"},
            {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
            {"Sec-Fetch-Mode": "no-cors"},
            {"Host": f"evil.example:{port}", "Content-Type": "application/json"},
        ]
        for h in attacks:
            status, _, data = request(url, "POST", path, host=h.pop("Host", None), headers=h, body=body)
            assert (status, data["reason"]) == (403, "browser"), h
        assert request(url, "POST", path, headers={"Content-Type": "application/json"}, body=body)[0] == 200
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(TOKENS)
    with bridge_thread(make_bridge(settings, tokens)) as url:
        auth = {"Authorization": "Bearer tok-alpha", "Content-Type": "application/json"}
        status, _, data = request(url, "POST", "/audit/alpha", headers={**auth, "Origin": "https://evil.example"},
                                  body=body)  # fmt: skip
        assert (status, data["reason"]) == (403, "browser")
        assert request(url, "POST", "/audit/alpha", host="audit.corp.example", headers=auth, body=body)[0] == 200
    recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW), expect=2)
    assert [r.value for r in recs] == [body, body]  # the two accepted posts, nothing of the refused ones
