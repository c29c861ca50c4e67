"""kaudit serve: the dashboard and the read-only query API over the warehouse."""

from __future__ import annotations

import argparse
import base64
import hmac
import ipaddress
import logging
import socket
import sys
from typing import Any

from pipeline.commands._common import add_clickhouse_flag, settings_from

HELP = "serve the dashboard and the read-only query API (default http://127.0.0.1:8080)"
DESCRIPTION = """\
Serve the web dashboard (widgets, drill-down to every event, RBAC explanations) and the read-only query API
(/api/query, /api/sql) over the warehouse.

Embedded mode (no --clickhouse / KAUDIT_CLICKHOUSE_DSN): only one process may open the chDB folder. When the
sink runs, it owns it and already serves this dashboard; `serve` then says where and exits with code 2.
With a ClickHouse server DSN any number of `serve` processes can run.

Binds to loopback by default. Binding another address needs --token (clients send
`Authorization: Bearer T`; a browser opens http://HOST:PORT/?token=T once) or --basic USER:PASS.
"""
log = logging.getLogger("kaudit.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (KAUDIT_API_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (KAUDIT_API_PORT, default 8080)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token", help="require this bearer token (KAUDIT_API_TOKEN)")
    auth.add_argument("--basic", metavar="USER:PASS", help="require HTTP basic auth with these credentials")
    add_clickhouse_flag(p)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(ai[4][0]).is_loopback for ai in socket.getaddrinfo(host, None))
        except OSError:
            return False


def auth_middleware(token: str, basic: str) -> Any:
    """Bearer token (header, or the `kaudit_token` cookie) for the API, or basic auth for everything.

    With a token the page and static files stay public (they hold no data) so a browser can load them and
    send the token from JavaScript; with basic auth the browser asks once and then sends it itself."""
    from aiohttp import web

    expected_basic = "Basic " + base64.b64encode(basic.encode()).decode() if basic else ""

    @web.middleware
    async def mw(req: web.Request, handler: Any) -> web.StreamResponse:
        if basic:
            if hmac.compare_digest(req.headers.get("Authorization", ""), expected_basic):
                return await handler(req)
            return web.Response(
                status=401,
                text="authentication required",
                headers={"WWW-Authenticate": 'Basic realm="kaudit"'},
            )
        if token and req.path.startswith("/api/") and req.path != "/api/health":
            got = req.headers.get("Authorization", "")
            if not (
                hmac.compare_digest(got, f"Bearer {token}")
                or hmac.compare_digest(req.cookies.get("kaudit_token", ""), token)
            ):
                return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        return await handler(req)

    return mw


def build_app(settings: Any, warehouse: Any, token: str = "", basic: str = "") -> Any:
    """The query API app (if installed) plus the dashboard routes, behind the auth middleware."""
    from aiohttp import web

    from pipeline.web import routes

    try:
        from pipeline.warehouse.api import make_app
    except ModuleNotFoundError as exc:
        if exc.name != "pipeline.warehouse.api":
            raise
        log.warning(
            "pipeline.warehouse.api is not installed: serving the dashboard without /api/query and /api/sql"
        )
        app = web.Application()

        async def health(_req: web.Request) -> web.Response:
            return web.json_response(
                {"ok": True, "embedded": settings.effective_clickhouse_dsn.startswith("chdb:")}
            )

        app.router.add_get("/api/health", health)
    else:
        # auth is handled here (token or basic), not twice
        app = make_app(settings.model_copy(update={"api_token": ""}), warehouse)
    if routes.WAREHOUSE_KEY not in app:  # make_app may already have added the dashboard
        routes.setup(app, settings, warehouse)
    if token or basic:
        app.middlewares.insert(0, auth_middleware(token, basic))
    return app


def is_locked_error(exc: BaseException) -> bool:
    """chDB reports a path held by another process as "Cannot lock file" (Code 76) on stderr and raises only
    "Error initializing EmbeddedServer" (Code 36), so both count as locked."""
    from pipeline.warehouse.client import WarehouseLockedError

    text = str(exc)
    return isinstance(exc, WarehouseLockedError) or any(
        m in text for m in ("Cannot lock file", "Code: 76", "Error initializing EmbeddedServer")
    )


def open_warehouse(settings: Any) -> tuple[Any, Any]:
    """(warehouse, probe client). The probe client opens the engine now (so a locked chDB path fails fast)
    and applies missing migrations so that an empty warehouse shows an empty dashboard, not errors."""
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.warehouse.reader import Warehouse

    probe = open_client(settings)
    migrate(probe, settings)
    return Warehouse(settings), probe


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    s = settings_from(args, api_host="host", api_port="port", clickhouse_dsn="clickhouse")
    token = args.token or s.api_token
    basic = args.basic or ""
    if basic and ":" not in basic:
        print("--basic needs USER:PASS", file=sys.stderr)
        return 2
    if not is_loopback(s.api_host) and not (token or basic):
        print(
            f"refusing to serve on {s.api_host} without authentication: the dashboard shows who did what in your "
            "clusters. Add --token T or --basic USER:PASS, or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    try:
        warehouse, _probe = open_warehouse(s)
    except Exception as exc:
        if not (s.effective_clickhouse_dsn.startswith("chdb:") and is_locked_error(exc)):
            raise
        from pipeline.config import get_settings

        env = get_settings()  # the sink's address comes from the environment, not from this command's flags
        url = s.api_url or f"http://{env.api_host}:{env.api_port}"
        print(
            f"the embedded warehouse {s.effective_clickhouse_dsn[len('chdb://') :]} is owned by another process (the sink), which already serves "
            f"the dashboard and query API at {url}/ - open that instead, or point --clickhouse at a ClickHouse server.",
            file=sys.stderr,
        )
        return 2
    app = build_app(s, warehouse, token, basic)
    auth = "basic auth" if basic else "bearer token" if token else "no auth (loopback only)"
    host_for_url = f"[{s.api_host}]" if ":" in s.api_host else s.api_host
    log.info(
        "dashboard at http://%s:%d/ (%s), warehouse %s",
        host_for_url,
        s.api_port,
        auth,
        s.effective_clickhouse_dsn,
    )
    print(f"kaudit dashboard: http://{host_for_url}:{s.api_port}/  ({auth}; Ctrl-C stops)", flush=True)
    web.run_app(app, host=s.api_host, port=s.api_port, print=None, access_log=None)
    return 0
