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

Binds to loopback by default. Binding another address needs authentication:
  --readers-file FILE  reader tokens (plain or sha256:<hex>, see `kaudit token hash`), each with the clusters it
                       may see and a role (reader, or admin: may also run raw SQL); re-read on change and SIGHUP:
                         readers:
                           team-a: {tokens: [sha256:...], clusters: [prod-a]}
                           ops:    {token: sha256:..., clusters: "*", role: admin}
  --token T            one admin token (clients send `Authorization: Bearer T`; a browser opens
                       http://HOST:PORT/?token=T once); may be combined with --readers-file
  --basic USER:PASS    HTTP basic auth, one admin user (not with --readers-file)
Every API request is logged as one JSON line (logger kaudit.audit; also to --audit-file) and counted in /metrics.
HTTPS: --tls-cert and --tls-key (as the bridge).
"""
log = logging.getLogger("kaudit.serve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (KAUDIT_API_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (KAUDIT_API_PORT, default 8080)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token", help="accept this bearer token as an admin (KAUDIT_API_TOKEN)")
    auth.add_argument("--basic", metavar="USER:PASS", help="require HTTP basic auth with these credentials")
    p.add_argument("--readers-file", metavar="FILE", help="reader tokens -> clusters, role (KAUDIT_API_READERS_FILE)")
    p.add_argument("--audit-file", metavar="FILE", help="append the JSON audit line of every request here "
                                                        "(KAUDIT_API_AUDIT_FILE)")  # fmt: skip
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (chain) for HTTPS (KAUDIT_API_TLS_CERT)")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert (KAUDIT_API_TLS_KEY)")
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


def auth_middleware(basic: str) -> Any:
    """HTTP basic auth for everything (the browser asks once and then sends it itself). Bearer tokens and
    reader tokens are checked by pipeline.access, which the API app and the dashboard routes install."""
    from aiohttp import web

    expected_basic = "Basic " + base64.b64encode(basic.encode()).decode()

    @web.middleware
    async def mw(req: web.Request, handler: Any) -> web.StreamResponse:
        if hmac.compare_digest(req.headers.get("Authorization", ""), expected_basic):
            return await handler(req)
        return web.Response(
            status=401,
            text="authentication required",
            headers={"WWW-Authenticate": 'Basic realm="kaudit"'},
        )

    return mw


def build_app(settings: Any, warehouse: Any, token: str = "", basic: str = "") -> Any:
    """The query API app (if installed) plus the dashboard routes. ``token`` is an admin bearer token (with the
    readers of settings.api_readers_file); ``basic`` puts basic auth in front of everything instead, and its
    user is an admin of every cluster."""
    from pipeline.access.browser import AUTH_IN_FRONT
    from pipeline.warehouse.api import make_app
    from pipeline.web import routes

    if basic:  # basic auth in front; behind it the access layer is open (one admin user)
        settings = settings.model_copy(update={"api_token": "", "api_readers_file": None})
    elif token:
        settings = settings.model_copy(update={"api_token": token})
    app = make_app(settings, warehouse)
    if routes.WAREHOUSE_KEY not in app:  # make_app adds the dashboard when pipeline.web is there
        routes.setup(app, settings, warehouse)
    if basic:
        app.middlewares.insert(0, auth_middleware(basic))
        app[AUTH_IN_FRONT] = True  # open behind basic auth: any Host name (the CSRF checks stay)
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

    from pipeline.access.readers import Readers, ReadersFileError
    from pipeline.access.tls import make_ssl_context

    s = settings_from(args, api_host="host", api_port="port", clickhouse_dsn="clickhouse",
                      api_readers_file="readers_file", api_audit_file="audit_file", api_tls_cert="tls_cert",
                      api_tls_key="tls_key")  # fmt: skip
    token = args.token or s.api_token
    basic = args.basic or ""
    if basic and ":" not in basic:
        print("--basic needs USER:PASS", file=sys.stderr)
        return 2
    if basic and s.api_readers_file:
        print("--basic and --readers-file do not go together: a browser sends one Authorization header",
              file=sys.stderr)  # fmt: skip
        return 2
    if not is_loopback(s.api_host) and not (token or basic or s.api_readers_file):
        print(
            f"refusing to serve on {s.api_host} without authentication: the dashboard shows who did what in your "
            "clusters. Add --readers-file FILE, --token T or --basic USER:PASS, or bind 127.0.0.1.",
            file=sys.stderr,
        )
        return 2
    try:
        ssl_ctx = make_ssl_context(s.api_tls_cert or None, s.api_tls_key or None)
    except (OSError, ValueError) as exc:
        print(f"kaudit serve: TLS setup failed: {exc}", file=sys.stderr)
        return 2
    if s.api_readers_file:
        try:  # a broken readers file must stop the start, not leave the API open or closed by surprise
            Readers(s.api_readers_file).load()
        except ReadersFileError as exc:
            print(f"kaudit serve: {exc}", file=sys.stderr)
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
    auth = ("basic auth" if basic else "reader tokens" + (" + admin token" if token else "") if s.api_readers_file
            else "admin bearer token" if token else "no auth (loopback only)")  # fmt: skip
    scheme = "https" if ssl_ctx else "http"
    host_for_url = f"[{s.api_host}]" if ":" in s.api_host else s.api_host
    log.info("dashboard at %s://%s:%d/ (%s), warehouse %s", scheme, host_for_url, s.api_port, auth,
             s.effective_clickhouse_dsn)  # fmt: skip
    print(f"kaudit dashboard: {scheme}://{host_for_url}:{s.api_port}/  ({auth}; Ctrl-C stops)", flush=True)
    web.run_app(app, host=s.api_host, port=s.api_port, ssl_context=ssl_ctx, print=None, access_log=None)
    return 0
