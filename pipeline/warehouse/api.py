"""Read-only query HTTP API (aiohttp), served by the warehouse owner: ``kaudit sink`` in embedded mode (on its own
thread and loop) or ``kaudit serve``. Queries run in the Warehouse thread pool, never on the event loop.

Access (``pipeline.access``): every route but health and metrics needs a reader token; query-language queries
and exports are confined to the reader's clusters inside the compiled statement and by the engine's table
filters; raw SQL is for admins (an admin of some clusters gets it confined by ``sqlguard.scope_to_clusters``)."""

from __future__ import annotations

import asyncio
import csv
import importlib
import io
import logging
import threading
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.access import web as access
from pipeline.access.tls import make_ssl_context
from pipeline.config import Settings
from pipeline.query import QueryError, compile_query
from pipeline.query.output import csv_cell  # noqa: F401 - one formula guard, re-exported
from pipeline.warehouse.reader import LimitExceeded, ReadOnlyError, Warehouse, jsonable

log = logging.getLogger("kaudit.api")
WAREHOUSE = web.AppKey("warehouse", Warehouse)
SETTINGS = web.AppKey("settings", Settings)


def _error(status: int, message: str, column: int | None = None, **extra: Any) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if column:
        body["column"] = column
    body.update({k: v for k, v in extra.items() if v is not None})
    return web.json_response(body, status=status)


# A read stopped at a limit: 422 with the limit's name (the statement is valid; it asks for too much).
LIMIT_STATUS = 422


def limit_response(exc: LimitExceeded) -> web.Response:
    return _error(LIMIT_STATUS, str(exc), limit=exc.limit)


def refused_response(exc: ReadOnlyError) -> web.Response:
    return _error(400, f"refused: {exc}", refused=exc.offending)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "embedded": request.app[WAREHOUSE].embedded})


async def _run(
    request: web.Request, sql: str, params: dict[str, Any], extra: dict[str, Any], cq: Any = None
) -> web.Response:
    wh = access.confined(request, request.app[WAREHOUSE])
    t0 = time.perf_counter()
    try:
        # a compiled query-language query runs through query_compiled: listings search the newest events first
        cols, rows = await (wh.aquery_compiled(cq) if cq is not None else wh.aquery(sql, params))
    except LimitExceeded as exc:
        return limit_response(exc)
    except Exception as exc:  # noqa: BLE001 - ClickHouse says what is wrong
        log.info("query failed: %s", exc)
        access.note(request, error=str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__)
        return _error(400, f"query failed: {str(exc).strip().splitlines()[0][:500]}")
    access.note(request, rows=len(rows))
    body = {"columns": cols, "rows": rows, "sql": sql, "params": jsonable(params),
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1), **extra}  # fmt: skip
    return web.json_response(body)


def _compile(request: web.Request) -> Any:
    """The request's query-language query, confined to the reader's clusters (QueryError on bad input)."""
    qs = request.query
    text = qs.get("q", "")
    access.note(request, query=text)
    return compile_query(text, since=qs.get("since") or None, from_=qs.get("from") or None,
                         to=qs.get("to") or None, cluster=qs.get("cluster") or None,
                         settings=request.app[SETTINGS],
                         allowed_clusters=access.allowed_clusters(request))  # fmt: skip


async def query(request: web.Request) -> web.Response:
    try:
        cq = _compile(request)
    except QueryError as exc:
        return _error(400, str(exc), exc.column)
    # columns: the display names (group fields, count, ...) rather than the SQL aliases
    return await _run(request, cq.sql, cq.params, {"kind": cq.kind, "columns": cq.columns}, cq)


async def export(request: web.Request) -> web.StreamResponse:
    """``GET /api/export?q=...&format=csv|json``: a query's result as a file download (same confinement)."""
    fmt = request.query.get("format", "csv")
    if fmt not in ("csv", "json"):
        return _error(400, "format must be csv or json")
    try:
        cq = _compile(request)
    except QueryError as exc:
        return _error(400, str(exc), exc.column)
    try:
        _, rows = await access.confined(request, request.app[WAREHOUSE]).aquery_compiled(cq)
    except LimitExceeded as exc:
        return limit_response(exc)
    except Exception as exc:  # noqa: BLE001
        return _error(400, f"query failed: {str(exc).strip().splitlines()[0][:500]}")
    access.note(request, rows=len(rows))
    headers = {"Content-Disposition": f'attachment; filename="kaudit-export.{fmt}"'}
    if fmt == "json":
        return web.json_response([dict(zip(cq.columns, r, strict=False)) for r in rows], headers=headers)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cq.columns)
    for r in rows:
        w.writerow([csv_cell(v) for v in r])
    return web.Response(text=buf.getvalue(), content_type="text/csv", headers=headers)


async def sql(request: web.Request) -> web.Response:
    try:
        payload = await request.json()
        text = payload["sql"]
        if not isinstance(text, str):
            raise TypeError
    except Exception:  # noqa: BLE001
        return _error(400, 'body must be JSON {"sql": "SELECT ..."}')
    access.note(request, query=text)
    reader = access.reader_of(request)
    if reader is None or not reader.is_admin:
        return _error(403, "raw SQL is for admin readers; use the query language (GET /api/query), which is "
                           "confined to your clusters")  # fmt: skip
    wh = request.app[WAREHOUSE]
    # an admin of every cluster runs the checked statement; an admin of some clusters gets it confined by the
    # engine (sqlguard.scope_to_clusters: the parsed query rewritten, plus table filters), never widened
    clusters = reader.allowed()
    try:
        body = await asyncio.get_running_loop().run_in_executor(wh.pool, wh.timed_sql, text, clusters)
    except ReadOnlyError as exc:
        access.note(request, error=f"refused: {exc}")
        return refused_response(exc)
    except LimitExceeded as exc:
        access.note(request, error=str(exc))
        return limit_response(exc)
    except Exception as exc:  # noqa: BLE001 - ClickHouse says what is wrong
        log.info("query failed: %s", exc)
        return _error(400, f"query failed: {str(exc).strip().splitlines()[0][:500]}")
    access.note(request, rows=len(body["rows"]))
    return web.json_response(body)


async def metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: Settings, warehouse: Warehouse) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[WAREHOUSE] = warehouse
    access.install(app, settings)  # readers, their clusters, the self-audit (pipeline/access)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/query", query)
    app.router.add_get("/api/export", export)
    app.router.add_post("/api/sql", sql)
    app.router.add_get("/metrics", metrics)
    try:
        routes = importlib.import_module("pipeline.web.routes")
    except ModuleNotFoundError as exc:
        if exc.name not in ("pipeline.web.routes", "pipeline.web"):
            raise
    else:
        routes.setup(app, settings, warehouse)
    from pipeline.searches import api as searches_api  # saved searches, query alerts, /api/clusters

    searches_api.setup(app, settings, warehouse)
    return app


class ApiServer:
    """The API on its own thread and event loop (the sink's threads stay free of asyncio)."""

    def __init__(self, settings: Settings, warehouse: Warehouse, host: str | None = None, port: int | None = None):
        self.settings = settings
        self.warehouse = warehouse
        self.host = host or settings.api_host
        self.port = port if port is not None else settings.api_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.scheme = "http"
        self.app: web.Application | None = None

    def start(self, timeout: float = 30) -> None:
        self._thread = threading.Thread(target=self._main, name="query-api", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self.error:
            raise RuntimeError(f"query API cannot start on {self.host}:{self.port}: {self.error}") from self.error

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            app = self.app = make_app(self.settings, self.warehouse)
            if app[access.ACCESS].readers.open and not access.is_loopback(self.host):
                raise ValueError("no authentication configured (KAUDIT_API_READERS_FILE or KAUDIT_API_TOKEN): "
                                 "the query API only binds a loopback address then")  # fmt: skip
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            ssl_ctx = make_ssl_context(self.settings.api_tls_cert or None, self.settings.api_tls_key or None)
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=ssl_ctx)
            self.scheme = "https" if ssl_ctx else "http"
            self._loop.run_until_complete(site.start())
            if self.port == 0:
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self._ready.set()
            return
        log.info("query API on %s://%s:%d (read-only)", self.scheme, self.host, self.port)
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def reload_readers(self) -> None:
        """Re-read the readers file now (the sink calls this on SIGHUP: this thread cannot take signals)."""
        if self.app is not None and self._loop is not None and self._loop.is_running():
            readers = self.app[access.ACCESS].readers
            self._loop.call_soon_threadsafe(self._loop.run_in_executor, None, readers.reload)

    def stop(self) -> None:
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
