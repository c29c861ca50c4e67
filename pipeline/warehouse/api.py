"""Read-only query HTTP API (aiohttp), served by the warehouse owner: ``kaudit sink`` in embedded mode (on its own
thread and loop) or ``kaudit serve``. Queries run in the Warehouse thread pool, never on the event loop."""

from __future__ import annotations

import asyncio
import hmac
import importlib
import logging
import threading
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.config import Settings
from pipeline.query import QueryError, compile_query
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


@web.middleware
async def _auth(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app[SETTINGS].api_token
    if token and request.path.startswith("/api/") and request.path != "/api/health":
        got = request.headers.get("Authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return _error(401, "missing or wrong bearer token (KAUDIT_API_TOKEN)")
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "embedded": request.app[WAREHOUSE].embedded})


async def _run(
    request: web.Request, sql: str, params: dict[str, Any], extra: dict[str, Any], cq: Any = None
) -> web.Response:
    wh = request.app[WAREHOUSE]
    t0 = time.perf_counter()
    try:
        # a compiled query-language query runs through query_compiled: listings search the newest events first
        cols, rows = await (wh.aquery_compiled(cq) if cq is not None else wh.aquery(sql, params))
    except LimitExceeded as exc:
        return limit_response(exc)
    except Exception as exc:  # noqa: BLE001 - ClickHouse says what is wrong
        log.info("query failed: %s", exc)
        return _error(400, f"query failed: {str(exc).strip().splitlines()[0][:500]}")
    body = {"columns": cols, "rows": rows, "sql": sql, "params": jsonable(params),
            "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1), **extra}  # fmt: skip
    return web.json_response(body)


async def query(request: web.Request) -> web.Response:
    qs = request.query
    text = qs.get("q", "")
    try:
        cq = compile_query(text, since=qs.get("since") or None, from_=qs.get("from") or None,
                           to=qs.get("to") or None, cluster=qs.get("cluster") or None)  # fmt: skip
    except QueryError as exc:
        return _error(400, str(exc), exc.column)
    # columns: the display names (group fields, count, ...) rather than the SQL aliases
    return await _run(request, cq.sql, cq.params, {"kind": cq.kind, "columns": cq.columns}, cq)


async def sql(request: web.Request) -> web.Response:
    try:
        payload = await request.json()
        text = payload["sql"]
        if not isinstance(text, str):
            raise TypeError
    except Exception:  # noqa: BLE001
        return _error(400, 'body must be JSON {"sql": "SELECT ..."}')
    wh = request.app[WAREHOUSE]
    try:
        body = await asyncio.get_running_loop().run_in_executor(wh.pool, wh.timed_sql, text)
    except ReadOnlyError as exc:
        return refused_response(exc)
    except LimitExceeded as exc:
        return limit_response(exc)
    except Exception as exc:  # noqa: BLE001 - ClickHouse says what is wrong
        log.info("query failed: %s", exc)
        return _error(400, f"query failed: {str(exc).strip().splitlines()[0][:500]}")
    return web.json_response(body)


async def metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_app(settings: Settings, warehouse: Warehouse) -> web.Application:
    app = web.Application(middlewares=[_auth], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[WAREHOUSE] = warehouse
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/query", query)
    app.router.add_post("/api/sql", sql)
    app.router.add_get("/metrics", metrics)
    try:
        routes = importlib.import_module("pipeline.web.routes")
    except ModuleNotFoundError as exc:
        if exc.name not in ("pipeline.web.routes", "pipeline.web"):
            raise
    else:
        routes.setup(app, settings, warehouse)
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

    def start(self, timeout: float = 30) -> None:
        self._thread = threading.Thread(target=self._main, name="query-api", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        if self.error:
            raise RuntimeError(f"query API cannot listen on {self.host}:{self.port}: {self.error}") from self.error

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(make_app(self.settings, self.warehouse), access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port)
            self._loop.run_until_complete(site.start())
            if self.port == 0:
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self._ready.set()
            return
        log.info("query API on http://%s:%d (read-only)", self.host, self.port)
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._loop and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(timeout=10)
