"""Query API routes for saved searches and the clusters picker, added to the warehouse owner's app
(``pipeline.warehouse.api.make_app``):

- ``GET /api/clusters[?q=&limit=&group=]``: every cluster (clusters file + clusters with stored events) with its
  group and labels; ``q`` keeps names containing it (case-insensitive), ``group`` one group's clusters, ``limit``
  the first n (``total`` = how many matched, ``truncated`` = some left out): a picker over 1,000 clusters searches.
- ``GET /api/searches[?owner=&alerts=1]``, ``GET /api/searches/{name}``: saved searches.
- ``POST /api/searches`` (JSON SavedSearch): save or replace; 400 ``{"error", "column", "field"}`` when it does not
  compile. ``DELETE /api/searches/{name}``.
- ``GET /api/searches/{name}/run?since=|from=&to=``: run it (same answer as /api/query).
Store calls run in the warehouse's thread pool, never on the event loop.

Readers confined to some clusters (pipeline.access) see only the clusters they may see, and only the saved
searches whose clusters are a non-empty subset of theirs (a search over "all clusters" is an all-cluster reader's);
what they save is confined to their clusters, and a run is confined like /api/query (predicate + engine filters).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from pipeline.access import web as access
from pipeline.config import Settings
from pipeline.query import QueryError, compile_query
from pipeline.query.clusters import PICK_MAX, ClustersFileError, Pick, PickError, for_settings
from pipeline.searches.store import SavedSearch, SearchError, Store
from pipeline.warehouse.reader import jsonable

log = logging.getLogger("kaudit.searches")
STORE = web.AppKey("kaudit_searches_store", Store)
WH = web.AppKey("kaudit_searches_warehouse", object)
CFG = web.AppKey("kaudit_searches_settings", Settings)


def _err(status: int, message: str, column: int | None = None, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if column:
        body["column"] = column
    if field:
        body["field"] = field
    return web.json_response(body, status=status)


async def _blocking(req: web.Request, fn: Any, *args: Any) -> Any:
    pool = getattr(req.app[WH], "pool", None)
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def clusters(req: web.Request) -> web.Response:
    try:
        cm = for_settings(req.app[CFG])
    except ClustersFileError as exc:
        return _err(500, str(exc))
    try:
        pick = Pick.from_query(req.query)
    except PickError as exc:
        return _err(400, str(exc))
    allowed = access.allowed_clusters(req)
    wh = access.confined(req, req.app[WH])
    sql, params = f"SELECT DISTINCT cluster FROM events_1m ORDER BY cluster LIMIT {PICK_MAX}", {}
    if allowed is not None:
        sql = ("SELECT DISTINCT cluster FROM events_1m WHERE cluster IN {allowed:Array(String)} "
               f"ORDER BY cluster LIMIT {PICK_MAX}")  # fmt: skip
        params = {"allowed": allowed}
    _cols, rows = await _blocking(req, wh.query, sql, params)
    seen = {r[0] for r in rows}
    out = [{**c, "seen": c["name"] in seen} for c in cm.as_json()]
    out += [{"name": n, "group": "", "labels": {}, "seen": True} for n in sorted(seen - set(cm.clusters))]
    groups = cm.groups
    if allowed is not None:
        out = [c for c in out if c["name"] in allowed]
        groups = sorted({c["group"] for c in out if c["group"]})
    out.sort(key=lambda c: (c["group"] == "", c["group"], c["name"]))
    out, total, truncated = pick.cut([c for c in out if pick.matches(c["name"], c["group"])])
    access.note(req, rows=len(out))
    return web.json_response({"clusters": out, "groups": groups, "total": total, "truncated": truncated,
                              "file": str(cm.path) if cm.path else None})  # fmt: skip


def _visible(req: web.Request, ss: SavedSearch | None) -> SavedSearch | None:
    """The search if this reader may see it: every cluster of it among the reader's (and it names some)."""
    allowed = access.allowed_clusters(req)
    if ss is None or allowed is None:
        return ss
    return ss if ss.clusters and set(ss.clusters) <= set(allowed) else None


async def list_searches(req: web.Request) -> web.Response:
    store = req.app[STORE]
    found = await _blocking(req, store.list, req.query.get("owner") or None, req.query.get("alerts") in ("1", "true"))
    found = [s for s in found if _visible(req, s)]
    access.note(req, rows=len(found))
    return web.json_response({"searches": [s.as_json() for s in found]})


async def get_search(req: web.Request) -> web.Response:
    ss = _visible(req, await _blocking(req, req.app[STORE].get, req.match_info["name"]))
    if ss is None:
        return _err(404, f"no saved search {req.match_info['name']!r}")
    return web.json_response(ss.as_json())


async def save_search(req: web.Request) -> web.Response:
    try:
        body = await req.json()
    except Exception:  # noqa: BLE001
        return _err(400, 'body must be a JSON saved search {"name": ..., "query": ...}')
    allowed = access.allowed_clusters(req)
    if allowed is not None and isinstance(body, dict):
        wanted = body.get("clusters") or []
        wanted = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(wanted, list) or not set(map(str, wanted)) <= set(allowed):
            return _err(403, "a saved search may name only the clusters this token may read", field="clusters")
        body = {**body, "clusters": wanted or allowed}  # "all clusters" of a confined reader = its clusters
        existing = await _blocking(req, req.app[STORE].get, str(body.get("name", "")))
        if existing is not None and _visible(req, existing) is None:
            return _err(403, "a saved search of that name exists and is not this token's to replace", field="name")
    try:
        ss = SavedSearch.from_json(body)
        saved = await _blocking(req, req.app[STORE].save, ss)
    except SearchError as exc:
        return _err(400, str(exc), exc.column, exc.field)
    log.info("saved search %s (owner %s%s)", saved.name, saved.owner or "-", ", alert" if saved.is_alert else "")
    return web.json_response(saved.as_json())


async def delete_search(req: web.Request) -> web.Response:
    name = req.match_info["name"]
    if _visible(req, await _blocking(req, req.app[STORE].get, name)) is None:
        return _err(404, f"no saved search {name!r}")
    if not await _blocking(req, req.app[STORE].delete, name):
        return _err(404, f"no saved search {name!r}")
    return web.json_response({"deleted": name})


async def run_search(req: web.Request) -> web.Response:
    name = req.match_info["name"]
    ss = _visible(req, await _blocking(req, req.app[STORE].get, name))
    if ss is None:
        return _err(404, f"no saved search {name!r}")
    access.note(req, query=ss.query)
    qs = req.query
    since = qs.get("since") or (None if qs.get("from") or qs.get("to") else ss.since or None)
    try:
        cq = compile_query(ss.query, since=since, from_=qs.get("from") or None, to=qs.get("to") or None,
                           cluster=ss.clusters or None, settings=req.app[CFG],
                           allowed_clusters=access.allowed_clusters(req))  # fmt: skip
    except QueryError as exc:
        return _err(400, str(exc), exc.column)
    t0 = time.perf_counter()
    try:
        cols, rows = await access.confined(req, req.app[WH]).aquery_compiled(cq)
    except Exception as exc:  # noqa: BLE001
        return _err(400, f"query failed: {str(exc).strip().splitlines()[0][:500]}")
    del cols
    access.note(req, rows=len(rows))
    return web.json_response({"columns": cq.columns, "rows": rows, "kind": cq.kind, "sql": cq.sql,
                              "params": jsonable(cq.params), "search": ss.as_json(),
                              "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)})  # fmt: skip


def setup(app: web.Application, settings: Settings, warehouse: Any) -> None:
    app[STORE] = Store.for_warehouse(warehouse)
    app[WH] = warehouse
    app[CFG] = settings
    r = app.router
    r.add_get("/api/clusters", clusters)
    r.add_get("/api/searches", list_searches)
    r.add_post("/api/searches", save_search)
    r.add_get("/api/searches/{name}", get_search)
    r.add_delete("/api/searches/{name}", delete_search)
    r.add_get("/api/searches/{name}/run", run_search)
