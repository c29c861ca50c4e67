"""The dashboard's volume page routes over the real warehouse (chDB) loaded with every sample: the report equals
counts computed here from the same events; the suggested policy; clear 400s; the page's script is served."""

from __future__ import annotations

from collections import Counter

import yaml

from tests.test_web_support import get, loaded, server  # noqa: F401 - fixtures


def test_volume_report_matches_the_events(loaded, server):  # noqa: F811
    d = get(server.url, "/api/volume", since="all", by="user", top=5)
    assert d["totals"]["events"] == len(loaded.events)
    assert d["totals"]["bytes"] == sum(e["event_bytes"] for e in loaded.events) > 0
    users = Counter(e["username"] for e in loaded.events)
    assert [(g["key"]["user"], g["events"]) for g in d["top"]] == users.most_common(5)
    assert sum(c["events"] for c in d["categories"]) == len(loaded.events)
    assert d["headline"] and d["ch_bytes"] > 0 and d["by"] == ["user"]
    one = sorted({e["cluster"] for e in loaded.events})[0]
    d1 = get(server.url, "/api/volume", since="all", cluster=one)
    assert d1["totals"]["events"] == sum(e["cluster"] == one for e in loaded.events)


def test_volume_policy_and_errors(loaded, server):  # noqa: F811
    text = get(server.url, "/api/volume/policy", since="all", target="100")
    doc = yaml.safe_load(text)
    assert doc["kind"] == "Policy" and doc["rules"] and text.startswith("# Suggested by `kaudit policy suggest`")
    assert "error" in get(server.url, "/api/volume", expect=400, since="all", by="password")
    assert "error" in get(server.url, "/api/volume", expect=400, since="forever")
    assert "error" in get(server.url, "/api/volume/policy", expect=400, since="all", target="0")


def test_volume_page_is_served_with_the_app(server):  # noqa: F811
    index = get(server.url, "/")
    assert '<script src="/static/volume.js" defer></script>' in index
    js = get(server.url, "/static/volume.js")
    assert "VIEWS.volume = viewVolume" in js and "/api/volume" in js
