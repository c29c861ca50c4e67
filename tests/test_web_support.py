"""Shared fixtures of the dashboard and RBAC tests (no tests here): the sample events loaded into a chDB
database of their own, and the dashboard app served from a background thread on a free port."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline.config import Settings
from tests.conftest import SAMPLES


@dataclass
class Loaded:
    settings: Settings
    db: str
    events: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    warehouse: Any


@pytest.fixture(scope="module")
def loaded(chdb_session_path) -> Loaded:
    """Every sample file (cluster = folder name), deduplicated like the worker, plus alerts for them."""
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.warehouse.reader import Warehouse
    from pipeline.web.sampledata import demo_alerts, insert_alerts, insert_events, sample_events

    dsn = f"chdb://{chdb_session_path}"
    admin = open_client(dsn=dsn)
    db = f"w_{uuid.uuid4().hex[:10]}"
    admin.command(f"CREATE DATABASE {db}")
    s = Settings(clickhouse_dsn=dsn)
    client = open_client(s, database=db)
    migrate(client, s)
    events = sample_events(SAMPLES)
    alerts = demo_alerts(events)
    insert_events(client, events)
    insert_alerts(client, alerts)
    wh = Warehouse(s, database=db)
    yield Loaded(s, db, events, alerts, wh)
    wh.close()
    admin.command(f"DROP DATABASE IF EXISTS {db}")


class ServerThread:
    """An aiohttp app on 127.0.0.1:<free port>, run by its own event loop in a daemon thread."""

    def __init__(self, app: Any) -> None:
        from aiohttp import web

        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        ready = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True, name="web-test-server")
        self.thread.start()
        assert ready.wait(30), "test server did not start"
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(loaded: Loaded):
    from aiohttp import web

    from pipeline.web import routes

    app = web.Application()
    routes.setup(app, loaded.settings, loaded.warehouse)
    srv = ServerThread(app)
    yield srv
    srv.stop()


def get(base: str, path: str, expect: int = 200, headers: dict[str, str] | None = None, **params: Any) -> Any:
    """GET JSON (or text for non-JSON answers); asserts the status code."""
    url = f"{base}{path}" + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, ctype, body = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        status, ctype, body = e.code, e.headers.get("Content-Type", ""), e.read()
    assert status == expect, (status, body[:500])
    return json.loads(body) if "json" in ctype else body.decode()
