"""Dashboard routes added to the query API app: ``setup(app, settings, warehouse)``.

- ``GET /`` and ``/static/*``: the single-page app (plain JS + vendored Chart.js; no CDN).
- ``GET /api/dashboard/clusters[?q=&limit=]``: cluster names for the picker (``q``: containing it, any case;
  ``limit``: the first n; ``total`` and ``truncated`` say how many matched), so 1,000 clusters are searched.
- ``GET /api/dashboard/widgets?since=1h|from=&to=&cluster=a,b``: every widget in one answer (queries run
  concurrently; a failing widget reports its error without hiding the others).
- ``GET /api/dashboard/events?<field>=<value>...|alert=<id>&limit=&offset=``: drill-down events table.
- ``GET /api/dashboard/event?auditid=&cluster=``: the full record(s) of one request, every stage.
- ``GET /api/rbac?user=&since=&cluster=[&format=json|yaml|text]``: denials explained + suggested RBAC YAML.

Every answer carries the query-language text of what it shows, so a view can be re-run in the query box.
All SQL is parameterized; nothing from the request is spliced into SQL text. Every query is confined to the
clusters of the caller's reader token (``pipeline.access``): a ``cluster=`` parameter only narrows that set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from pipeline.access import web as access
from pipeline.config import Settings
from pipeline.query.clusters import Pick, PickError
from pipeline.rbac import report as rbac_report
from pipeline.web import volume as volume_routes
from pipeline.web import widgets as W
from pipeline.web.store import WarehouseLike, aquery, rows_as_dicts
from pipeline.web.timerange import RangeError, TimeRange, parse_range

log = logging.getLogger("kaudit.web")
STATIC = Path(__file__).resolve().parent / "static"
WAREHOUSE_KEY = web.AppKey("kaudit_web_warehouse", object)
SETTINGS_KEY = web.AppKey("kaudit_web_settings", Settings)
MAX_LIMIT = 1000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS, default=str),
        status=status,
        content_type="application/json",
    )


def _bad(msg: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=orjson.dumps({"error": msg}).decode(), content_type="application/json")


def _clusters(req: web.Request) -> list[str]:
    raw = ",".join(req.query.getall("cluster", []))
    return [c.strip() for c in raw.split(",") if c.strip()]


async def _range(req: web.Request, wh: WarehouseLike, clusters: list[str]) -> TimeRange:
    allowed = access.allowed_clusters(req)
    q = req.query
    try:
        tr = parse_range(q.get("since"), q.get("from"), q.get("to"))
    except RangeError as exc:
        raise _bad(str(exc)) from None
    if tr.label == "all":  # narrow "everything" to the data's extent so buckets stay meaningful
        w = W.base_where(TimeRange(0, tr.to_us, "all"), clusters, W.T_ROLLUP, allowed)
        _, rows = await aquery(
            wh,
            f"SELECT toUnixTimestamp(min(minute)), toUnixTimestamp(max(minute)), count() FROM events_1m WHERE {w.sql_text()}",
            w.params,
        )
        if rows and rows[0][2]:
            tr = TimeRange(int(rows[0][0]) * 1_000_000, (int(rows[0][1]) + 60) * 1_000_000, "all")
    return tr


def _series(rows: list[list[Any]], tr: TimeRange | None = None) -> dict[str, Any]:
    """Rows (t, key, n) -> {times, series: {key: [n per time]}, totals: {key: n}} (keys as strings).
    With a range, empty buckets are filled with zeros so the time axis is continuous."""
    times = sorted({int(r[0]) for r in rows})
    if tr is not None:
        step = tr.step_s
        first = (tr.from_us // 1_000_000) // step * step
        grid = range(first, tr.to_us // 1_000_000, step)
        if len(grid) <= 4 * 120:
            times = sorted(set(times) | set(grid))
    index = {t: i for i, t in enumerate(times)}
    series: dict[str, list[int]] = {}
    totals: dict[str, int] = {}
    for t, k, n in rows:
        key = str(k)
        series.setdefault(key, [0] * len(times))[index[int(t)]] += int(n)
        totals[key] = totals.get(key, 0) + int(n)
    order = sorted(totals, key=lambda k: (-totals[k], k))
    return {
        "times": [t * 1000 for t in times],
        "series": {k: series[k] for k in order},
        "totals": {k: totals[k] for k in order},
    }


async def _widget(
    wh: WarehouseLike, name: str, spec: tuple[str, dict[str, Any], str], shape: str, tr: TimeRange
) -> dict[str, Any]:
    sql, params, ql = spec
    t0 = time.perf_counter()
    try:
        cols, rows = await aquery(wh, sql, params)
    except Exception as exc:  # noqa: BLE001 - one widget's failure must not blank the dashboard
        log.warning("widget %s failed: %s", name, exc)
        return {"error": str(exc).splitlines()[0][:300], "query": ql}
    out: dict[str, Any] = {"query": ql, "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)}
    if shape == "series":
        out.update(_series(rows, tr))
    elif shape == "top":
        out["items"] = [{"key": r[0], "count": int(r[1])} for r in rows]
    else:
        out["columns"] = cols
        out["rows"] = rows_as_dicts(cols, rows)
    return out


async def clusters_handler(req: web.Request) -> web.Response:
    try:
        pick = Pick.from_query(req.query)  # ?q=&limit=: the picker searches a fleet instead of listing it
    except PickError as exc:
        return _json({"error": str(exc)}, 400)
    wh = access.confined(req, req.app[WAREHOUSE_KEY])  # engine filters behind each query's predicate
    _, rows = await aquery(wh, *W.cluster_list(access.allowed_clusters(req)))
    names, total, truncated = pick.cut([r[0] for r in rows if pick.matches(r[0])])
    access.note(req, rows=len(names))
    return _json({"clusters": names, "total": total, "truncated": truncated})


async def widgets_handler(req: web.Request) -> web.Response:
    wh = access.confined(req, req.app[WAREHOUSE_KEY])  # engine filters behind each query's predicate
    clusters = _clusters(req)
    allowed = access.allowed_clusters(req)
    tr = await _range(req, wh, clusters)
    specs = {
        "actions": (W.actions(tr, clusters, allowed), "series"),
        "status": (W.status_codes(tr, clusters, allowed), "series"),
        "users": (W.top_events_column(tr, clusters, "username", allowed=allowed), "top"),
        "resources": (W.top_resources(tr, clusters, allowed=allowed), "top"),
        "sourceips": (W.top_events_column(tr, clusters, "sourceips", allowed=allowed), "top"),
        "useragents": (W.top_events_column(tr, clusters, "useragent", allowed=allowed), "top"),
        "denied": (W.denied_by_user(tr, clusters, allowed=allowed), "rows"),
        "alerts_by_rule": (W.alerts_by_rule(tr, clusters, allowed), "rows"),
        "recent_alerts": (W.recent_alerts(tr, clusters, 10, allowed), "rows"),
    }
    results = await asyncio.gather(*(_widget(wh, n, spec, shape, tr) for n, (spec, shape) in specs.items()))
    access.note(req, rows=sum(len(r.get("rows") or r.get("items") or r.get("totals") or ()) for r in results))
    body = dict(zip(specs, results, strict=True))
    body["actions"]["highlight"] = list(W.HIGHLIGHT_VERBS)
    out = {
        "range": {"from_us": tr.from_us, "to_us": tr.to_us, "label": tr.label, "step_s": tr.step_s},
        "clusters": clusters,
        "widgets": body,
    }
    if not body["actions"].get("error") and not sum(body["actions"].get("totals", {}).values()):
        out["elsewhere"] = await _extent(wh, clusters, allowed)
    return _json(out)


async def _extent(wh: WarehouseLike, clusters: list[str], allowed: list[str] | None) -> dict[str, Any] | None:
    """Where the stored events are when the chosen range is empty (old samples, a wrong clock, a future
    backfill): the dashboard says so and offers that range instead of an empty page."""
    w = W.base_where(TimeRange(0, 2**62, "all"), clusters, W.T_ROLLUP, allowed)
    _, rows = await aquery(
        wh,
        f"SELECT toUnixTimestamp(min(minute)), toUnixTimestamp(max(minute)), sum(events) FROM events_1m WHERE {w.sql_text()}",
        w.params,
    )
    if not rows or not rows[0][2]:
        return None
    first, last, n = int(rows[0][0]), int(rows[0][1]) + 60, int(rows[0][2])
    return {"from": _iso(first), "to": _iso(last), "events": n}


def _iso(epoch_s: int) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _int_param(req: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise _bad(f"{name} must be an integer") from None
    return max(lo, min(hi, v))


async def _alert_filters(
    wh: WarehouseLike, settings: Settings, alert_id: str, allowed: list[str] | None
) -> tuple[dict[str, Any], dict[str, str], TimeRange, list[str]]:
    sql, params = W.alert_row(alert_id, allowed)
    cols, rows = await aquery(wh, sql, params)
    if not rows:
        raise web.HTTPNotFound(
            text=orjson.dumps({"error": f"no alert {alert_id}"}).decode(), content_type="application/json"
        )
    a = dict(zip(cols, rows[0], strict=True))
    day = 86400 * 1_000_000
    if a["auditid"]:  # event rule: the one request
        return (
            a,
            {"auditid": a["auditid"]},
            TimeRange(a["ts_us"] - day, a["ts_us"] + day, "alert"),
            [a["cluster"]],
        )
    filters = {
        k: str(a[k])
        for k in ("username", "impersonated_username", "verb", "objectref_resource", "objectref_namespace")
        if a.get(k)
    }
    if a.get("responsestatus_code"):
        filters["responsestatus_code"] = str(a["responsestatus_code"])
    start = a["window_us"] or a["ts_us"] - 3600 * 1_000_000
    end = max(a["ts_us"], start + settings.window_seconds * 1_000_000) + 60_000_000
    tr = TimeRange(start - start % 60_000_000, end - end % 60_000_000 + 60_000_000, "alert window")
    return a, filters, tr, [a["cluster"]]


async def events_handler(req: web.Request) -> web.Response:
    wh = access.confined(req, req.app[WAREHOUSE_KEY])  # engine filters behind each query's predicate
    q = req.query
    limit = _int_param(req, "limit", 100, 1, MAX_LIMIT)
    offset = _int_param(req, "offset", 0, 0, 1_000_000)
    alert = None
    allowed = access.allowed_clusters(req)
    if q.get("alert"):
        alert, filters, tr, clusters = await _alert_filters(wh, req.app[SETTINGS_KEY], q["alert"], allowed)
    else:
        clusters = _clusters(req)
        tr = await _range(req, wh, clusters)
        filters = {k: v for k, v in q.items() if k in W.FILTERS}
        if "responsestatus_code" in filters and not filters["responsestatus_code"].isdigit():
            raise _bad("responsestatus_code must be a number")
    page_sql, count_sql, params, ql = W.events_list(tr, clusters, filters, limit, offset, allowed)
    (cols, rows), (_, total) = await asyncio.gather(
        aquery(wh, page_sql, params), aquery(wh, count_sql, params)
    )
    access.note(req, query=ql, rows=len(rows))
    return _json(
        {
            "columns": cols,
            "rows": rows_as_dicts(cols, rows),
            "total": int(total[0][0]) if total else 0,
            "limit": limit,
            "offset": offset,
            "filters": filters,
            "clusters": clusters,
            "alert": alert,
            "query": ql,
            "range": {"from_us": tr.from_us, "to_us": tr.to_us, "label": tr.label},
        }
    )


def _maybe_json(text: Any) -> Any:
    if not isinstance(text, str) or not text or text[0] not in "{[":
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # cut objects (objects_truncated) stay text


async def event_handler(req: web.Request) -> web.Response:
    wh = access.confined(req, req.app[WAREHOUSE_KEY])  # engine filters behind each query's predicate
    auditid = req.query.get("auditid", "")
    if not auditid:
        raise _bad("auditid is required")
    sql, params, ql = W.event_detail(req.query.get("cluster", ""), auditid, access.allowed_clusters(req))
    cols, rows = await aquery(wh, sql, params)
    access.note(req, query=ql, rows=len(rows))
    records = []
    for r in rows_as_dicts(cols, rows):
        for k in ("request_object", "response_object", "extra"):
            r[k] = _maybe_json(r.get(k))
        records.append(r)
    if not records:
        raise web.HTTPNotFound(
            text=orjson.dumps({"error": f"no event {auditid}"}).decode(), content_type="application/json"
        )
    return _json({"records": records, "query": ql})


async def rbac_handler(req: web.Request) -> web.Response:
    wh = access.confined(req, req.app[WAREHOUSE_KEY])  # engine filters behind each query's predicate
    user = req.query.get("user", "")
    if not user:
        raise _bad("user is required (a user name or system:serviceaccount:NS:NAME)")
    clusters = _clusters(req)
    q = req.query
    try:
        tr = parse_range(q.get("since") or "24h", q.get("from"), q.get("to"))
    except RangeError as exc:
        raise _bad(str(exc)) from None
    if tr.label == "all":
        tr = TimeRange(0, tr.to_us, "all time")
    denials = await rbac_report.aload_denials(wh, user, tr, clusters, access.allowed_clusters(req))
    rep = rbac_report.build(user, tr, clusters, denials)
    access.note(req, query=rep["query"], rows=len(denials))
    fmt = q.get("format", "json")
    if fmt == "yaml":
        return web.Response(text=rep["yaml"], content_type="application/yaml")
    if fmt == "text":
        return web.Response(text=rbac_report.explain_text(rep), content_type="text/plain")
    return _json(rep)


async def index_handler(req: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@web.middleware
async def _errors(req: web.Request, handler: Any) -> web.StreamResponse:
    """Dashboard routes answer JSON errors (never a stack trace page) and log what failed."""
    try:
        return await handler(req)
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001
        if not req.path.startswith(("/api/dashboard/", "/api/rbac")):
            raise
        from pipeline.warehouse.sqlguard import LimitExceeded

        if isinstance(exc, LimitExceeded):  # a read stopped at a limit (Settings query_max_*): 422 naming it
            return _json({"error": str(exc), "limit": exc.limit}, status=422)
        log.exception("%s failed", req.path)
        return _json(
            {"error": str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__}, status=500
        )


def setup(app: web.Application, settings: Settings, warehouse: WarehouseLike) -> None:
    """Add the dashboard to ``app`` (call before the app starts)."""
    app[WAREHOUSE_KEY] = warehouse
    app[SETTINGS_KEY] = settings
    access.install(app, settings)  # every route below is confined to the caller's clusters (pipeline/access)
    app.middlewares.append(_errors)
    r = app.router
    r.add_get("/api/dashboard/clusters", clusters_handler)
    r.add_get("/api/dashboard/widgets", widgets_handler)
    r.add_get("/api/dashboard/events", events_handler)
    r.add_get("/api/dashboard/event", event_handler)
    r.add_get("/api/rbac", rbac_handler)
    volume_routes.setup(app, settings, warehouse)  # /api/volume, /api/volume/policy (pipeline/web/volume.py)
    try:
        r.add_static("/static/", STATIC, append_version=False)
    except (RuntimeError, ValueError):  # the API app already serves /static/
        log.warning("dashboard: /static/ already routed; the dashboard's assets may not load")
    for path in ("/", "/dashboard"):
        try:
            r.add_get(path, index_handler)
        except RuntimeError:  # the API app already serves this path
            log.info("dashboard: %s already routed, skipping", path)
