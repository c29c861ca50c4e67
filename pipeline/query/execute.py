"""Where `kaudit query` / `kaudit sql` run: straight on the warehouse (server DSN, or an embedded chDB path
nobody holds), or through the owner's query API when a running sink holds the embedded path."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pipeline.config import Settings
from pipeline.warehouse.client import WarehouseLockedError, is_embedded

log = logging.getLogger("kaudit.query")


class ExecError(RuntimeError):
    """A query that could not run: ``column`` for query-language errors, ``limit`` when a read limit stopped it."""

    def __init__(self, message: str, column: int | None = None, limit: str | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.limit = limit


def api_url(s: Settings) -> str:
    return (s.api_url or f"http://{s.api_host}:{s.api_port}").rstrip("/")


def _http(s: Settings, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
    url = api_url(s) + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if s.api_token:
        req.add_header("Authorization", f"Bearer {s.api_token}")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310 - our own API URL
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())
        except Exception:  # noqa: BLE001
            err = {"error": f"HTTP {exc.code} from {url}"}
        raise ExecError(err.get("error", str(err)), err.get("column"), err.get("limit")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ExecError(
            f"the embedded warehouse is held by another process and its query API at {api_url(s)} does not answer "
            f"({exc}); is `kaudit sink` running? set KAUDIT_API_URL if it listens elsewhere"
        ) from None


def run(s: Settings, *, query: str | None = None, sql: str | None = None, qargs: dict[str, str | None] | None = None,
        database: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Execute a query-language string or read-only SQL; returns the API's JSON shape."""
    use_api = bool(s.api_url)
    if not use_api:
        from pipeline.warehouse.reader import Warehouse

        wh = Warehouse(s, max_workers=1, database=database)
        try:
            return _local(wh, query, sql, qargs or {})
        except WarehouseLockedError:
            if not is_embedded(s.effective_clickhouse_dsn):
                raise
            log.debug("warehouse locked by its owner; going through %s", api_url(s))
        finally:
            wh.close()
    if query is not None:
        params = {"q": query, **{k: v for k, v in (qargs or {}).items() if v}}
        return _http(s, "GET", "/api/query?" + urllib.parse.urlencode(params))
    return _http(s, "POST", "/api/sql", {"sql": sql})


def _local(wh: Any, query: str | None, sql: str | None, qargs: dict[str, str | None]) -> dict[str, Any]:
    from pipeline.query import compile_query

    if query is not None:
        cq = compile_query(query, since=qargs.get("since"), from_=qargs.get("from"), to=qargs.get("to"),
                           cluster=qargs.get("cluster"))  # fmt: skip
        out = _timed(wh, cq.sql, cq.params, cq)
        out["columns"] = cq.columns
        out["kind"] = cq.kind
        return out
    return _timed(wh, sql or "", {}, raw=True)


def _timed(wh: Any, sql: str, params: dict[str, Any], compiled: Any = None, raw: bool = False) -> dict[str, Any]:
    from pipeline.warehouse.sqlguard import LimitExceeded, ReadOnlyError

    try:
        return wh.timed_sql(sql) if raw else wh.timed(sql, params, compiled)
    except WarehouseLockedError:
        raise
    except ReadOnlyError as exc:
        raise ExecError(f"refused: {exc}") from None
    except LimitExceeded as exc:
        raise ExecError(str(exc), limit=exc.limit) from None
    except Exception as exc:  # noqa: BLE001
        if "Cannot lock file" in str(exc) or "Code: 76" in str(exc):
            raise WarehouseLockedError(str(exc)) from exc
        raise ExecError(f"query failed: {str(exc).strip().splitlines()[0][:500]}") from None
