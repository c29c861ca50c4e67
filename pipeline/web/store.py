"""Running SQL on whatever warehouse object we were given, without blocking the asyncio loop.

The contract is ``warehouse.query(sql, params) -> (columns, rows)`` (``pipeline.warehouse.reader.Warehouse``);
it may be a coroutine function or a blocking one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from typing import Any, Protocol


class WarehouseLike(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> Any: ...


Result = tuple[list[str], list[list[Any]]]


def _as_result(res: Any) -> Result:
    """Accept (columns, rows) or a clickhouse-connect QueryResult."""
    if hasattr(res, "column_names") and hasattr(res, "result_rows"):
        return list(res.column_names), [list(r) for r in res.result_rows]
    cols, rows = res
    return list(cols), [list(r) for r in rows]


async def aquery(wh: WarehouseLike, sql: str, params: dict[str, Any] | None = None) -> Result:
    """Run a query from the event loop: await an async warehouse, else run the blocking call in a thread."""
    fn = wh.query
    if inspect.iscoroutinefunction(fn):
        return _as_result(await fn(sql, params or {}))
    res = await asyncio.get_running_loop().run_in_executor(None, fn, sql, params or {})
    if inspect.isawaitable(res):
        res = await res
    return _as_result(res)


def squery(wh: WarehouseLike, sql: str, params: dict[str, Any] | None = None) -> Result:
    """Run a query from synchronous code (CLI)."""
    fn = wh.query
    if inspect.iscoroutinefunction(fn):
        return _as_result(asyncio.run(fn(sql, params or {})))
    res = fn(sql, params or {})
    if inspect.isawaitable(res):
        res = asyncio.run(res)  # type: ignore[arg-type]
    return _as_result(res)


def rows_as_dicts(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(cols, r, strict=False)) for r in rows]
