"""Access control of the query API / dashboard app: authenticate every request, hand handlers the reader (and
with it the clusters it may see), and audit the request afterwards.

Deny by default: every path needs a known token except the public ones below (health, the page and its static
files, which hold no data, and /metrics). Tokens come as ``Authorization: Bearer T`` or the ``kaudit_token``
cookie. Handlers call ``allowed_clusters(req)`` for the confinement of their queries and ``note(req, ...)`` for
what the audit line records (query text, rows)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from pipeline.access import browser
from pipeline.access.audit import REQUESTS, ROWS, AuditLog, clip, reader_label
from pipeline.access.readers import ANONYMOUS, Reader, Readers, ReadersFileError
from pipeline.config import Settings

log = logging.getLogger("kaudit.access")

PUBLIC_PATHS = frozenset({"/", "/dashboard", "/api/health", "/metrics"})
PUBLIC_PREFIXES = ("/static/",)
READER_KEY = web.RequestKey("kaudit_reader", Reader)
NOTE_KEY = web.RequestKey("kaudit_audit", dict)


class Access:
    """The readers table and the audit log of one app."""

    def __init__(self, readers: Readers, audit: AuditLog) -> None:
        self.readers = readers
        self.audit = audit

    @classmethod
    def from_settings(cls, s: Settings) -> Access:
        """Raises ReadersFileError when the readers file cannot be used (at startup that must be loud)."""
        readers = Readers(s.api_readers_file, s.api_token)
        readers.load()
        return cls(readers, AuditLog(s.api_audit_file))


ACCESS = web.AppKey("kaudit_access", Access)


def is_loopback(host: str) -> bool:
    """Open access (no readers, no token) is only allowed on a loopback bind."""
    import ipaddress

    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def reader_of(req: web.Request) -> Reader | None:
    return req.get(READER_KEY)


def allowed_clusters(req: web.Request) -> list[str] | None:
    """The clusters every query of this request is confined to (None = not confined). Fails closed: a request
    that reached a handler without a reader sees nothing."""
    reader = reader_of(req)
    return [] if reader is None else reader.allowed()


class ConfinedWarehouse:
    """The warehouse as one reader sees it: every read also carries the engine's table filters for the reader's
    clusters (``Warehouse.cluster_settings``: additional_table_filters on every cluster table), a second fence
    behind the cluster predicate each query carries, so a query that forgot its predicate still shows nothing
    of other clusters."""

    def __init__(self, wh: Any, clusters: list[str]) -> None:
        self.wh = wh
        self.clusters = clusters
        self.embedded = getattr(wh, "embedded", False)
        self.pool = getattr(wh, "pool", None)
        self._settings: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        if self._settings is None:
            self._settings = self.wh.cluster_settings(self.clusters)
        return self._settings

    def query(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.wh.query(sql, params, self.settings())

    def query_compiled(self, cq: Any) -> Any:
        from pipeline.query.listing import run_compiled

        return run_compiled(self.query, cq)

    async def aquery(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.query, sql, params)

    async def aquery_compiled(self, cq: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.query_compiled, cq)


def confined(req: web.Request, wh: Any) -> Any:
    """``wh`` for this request: as is for a reader of every cluster, else a ConfinedWarehouse (when the
    warehouse can build engine filters; the predicates in every query confine it in any case)."""
    allowed = allowed_clusters(req)
    if allowed is None or not hasattr(wh, "cluster_settings"):
        return wh
    return ConfinedWarehouse(wh, allowed)


def note(req: web.Request, *, query: str | None = None, rows: int | None = None, **extra: Any) -> None:
    """Record what the audit line of this request says (query text or SQL, rows returned)."""
    n = req.setdefault(NOTE_KEY, {})
    if query is not None:
        n["query"] = query
    if rows is not None:
        n["rows"] = n.get("rows", 0) + int(rows)
    n.update(extra)


def _token(req: web.Request) -> str:
    auth = req.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return req.cookies.get("kaudit_token", "")


def _deny(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def access_middleware(req: web.Request, handler: Any) -> web.StreamResponse:
    access = req.app[ACCESS]
    audited = req.path.startswith("/api/")
    t0 = time.perf_counter()
    reader: Reader | None = None
    status = 500
    try:
        if access.readers.open:
            reader = ANONYMOUS
        else:
            token = _token(req)
            reader = access.readers.authenticate(token) if token else None
        if reader is None and not is_public(req.path):
            status = 401
            return _deny(401, "missing or unknown bearer token (a reader token, or KAUDIT_API_TOKEN)")
        if reader is not None:
            req[READER_KEY] = reader
        resp = await handler(req)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if audited:
            _audit(access, req, reader, status, t0)


def _audit(access: Access, req: web.Request, reader: Reader | None, status: int, t0: float) -> None:
    n: dict[str, Any] = req.get(NOTE_KEY, {})
    params = {k: v for k, v in req.query.items() if k not in ("token", "q")}
    record = {
        "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "reader": reader.name if reader else None,
        "role": reader.role if reader else None,
        "clusters_allowed": reader.describe_clusters() if reader else None,
        "method": req.method,
        "path": req.path,
        "query": clip(n.get("query") if "query" in n else req.query.get("q")),
        "params": params,
        "rows": n.get("rows", 0),
        "status": status,
        "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1),
        "remote": req.remote,
    }
    if "error" in n:
        record["error"] = n["error"]
    try:
        access.audit.write(record)
        label = reader_label(reader.name if reader else None, access.readers.names() | {"anonymous"})
        REQUESTS.labels(label, str(status)).inc()
        if record["rows"]:
            ROWS.labels(label).inc(record["rows"])
    except Exception:  # noqa: BLE001 - auditing must never turn an answer into an error
        log.exception("audit line failed")



def install(app: web.Application, settings: Settings, access: Access | None = None) -> Access:
    """Put access control in front of ``app`` (idempotent: the API app and the dashboard routes both call it).
    The readers file is watched while the app runs; the audit file is closed with the app."""
    if ACCESS in app:
        return app[ACCESS]
    access = access or Access.from_settings(settings)
    app[ACCESS] = access
    app.middlewares.insert(0, access_middleware)
    browser.install(app, settings.api_allowed_hosts.split(","), access.readers.open)  # outermost: Host, CSRF, CSP

    async def on_startup(_app: web.Application) -> None:
        await access.readers.start()

    async def on_cleanup(_app: web.Application) -> None:
        await access.readers.stop()
        access.audit.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    if access.readers.open:
        log.warning("query API: no readers file and no KAUDIT_API_TOKEN: every caller is an admin (loopback only)")
    return access


__all__ = ["ACCESS", "Access", "ReadersFileError", "allowed_clusters", "install", "note", "reader_of"]
