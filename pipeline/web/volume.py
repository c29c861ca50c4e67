"""Dashboard routes of the volume page (registered by ``pipeline.web.routes.setup``):

- ``GET /api/volume?since=7d|from=&to=&cluster=a,b&by=user,verb,resource&top=20``: the volume report of
  ``pipeline.volume`` (totals, categories with shares, top contributors, events and bytes per hour, ClickHouse
  cost), from the hourly rollup.
- ``GET /api/volume/policy?since=&cluster=&target=60``: the audit policy ``kaudit policy suggest`` would write for
  that range, as YAML text (the default rules plus KAUDIT_RULES_FILE are protected).

Queries are parameterized and run off the event loop (one thread per request, the warehouse's own pool below).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from pipeline.access import web as access
from pipeline.config import Settings
from pipeline.volume import VolumeError, Window, parse_by, report
from pipeline.web.store import WarehouseLike, squery
from pipeline.web.timerange import RangeError, parse_range

WAREHOUSE = web.AppKey("kaudit_volume_warehouse", object)
SETTINGS = web.AppKey("kaudit_volume_settings", Settings)


def _bad(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=orjson.dumps({"error": msg}).decode(), content_type="application/json")


def _window(req: web.Request) -> Window:
    q = req.query
    try:
        tr = parse_range(q.get("since") or "7d", q.get("from"), q.get("to"))
    except RangeError as exc:
        raise _bad(str(exc)) from None
    clusters = [c.strip() for c in ",".join(q.getall("cluster", [])).split(",") if c.strip()]
    from_s = 0 if tr.label == "all" else tr.from_us // 1_000_000
    to_s = -(-tr.to_us // 1_000_000)
    allowed = access.allowed_clusters(req)
    return Window(from_s // 3600 * 3600, -(-to_s // 3600) * 3600, tuple(clusters),
                  allowed=None if allowed is None else tuple(allowed))


def _runner(wh: WarehouseLike) -> Any:
    return lambda sql, params: squery(wh, sql, params)[1]


async def volume_handler(req: web.Request) -> web.Response:
    w = _window(req)
    try:
        by = parse_by(req.query.get("by") or "user,verb,resource")
        top = max(1, min(200, int(req.query.get("top") or 20)))
    except (VolumeError, ValueError) as exc:
        raise _bad(str(exc)) from None
    rep = await asyncio.get_running_loop().run_in_executor(None, report, _runner(access.confined(req, req.app[WAREHOUSE])), w, by, top)
    return web.Response(body=orjson.dumps(rep.as_dict(), default=str), content_type="application/json")


async def policy_handler(req: web.Request) -> web.Response:
    from pipeline.agents.rules import RuleError, load_rules
    from pipeline.policy import PolicyError, suggest

    w = _window(req)
    try:
        target = float(req.query.get("target") or 60) / 100
        if not 0 < target <= 1:
            raise ValueError
    except ValueError:
        raise _bad("target is a percentage between 1 and 100") from None
    try:
        rules = load_rules(req.app[SETTINGS].rules_file)
    except RuleError as exc:
        raise _bad(str(exc)) from None

    def work() -> str:
        return suggest(_runner(access.confined(req, req.app[WAREHOUSE])), w, rules, target=target).text

    try:
        text = await asyncio.get_running_loop().run_in_executor(None, work)
    except PolicyError as exc:
        raise _bad(str(exc)) from None
    return web.Response(text=text, content_type="application/yaml")


def setup(app: web.Application, settings: Settings, warehouse: WarehouseLike) -> None:
    app[WAREHOUSE] = warehouse
    app[SETTINGS] = settings
    app.router.add_get("/api/volume", volume_handler)
    app.router.add_get("/api/volume/policy", policy_handler)
