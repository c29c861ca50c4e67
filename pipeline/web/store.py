"""Running SQL on whatever warehouse object we were given, without blocking the asyncio loop.

The contract is ``warehouse.query(sql, params) -> (columns, rows)`` (``pipeline.warehouse.reader.Warehouse``);
it may be a coroutine function or a blocking one. ``ClientWarehouse`` is a small stand-in with the same
contract (a clickhouse-connect client per thread) used by tests and by ``kaudit serve`` when the
reader module is not installed.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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


class ClientWarehouse:
    """Blocking ``query(sql, params)`` with one clickhouse-connect client per thread (chDB clients must not be
    shared while streaming). ``factory`` opens a client; queries are read-only (``readonly=2``)."""

    def __init__(self, factory: Callable[[], Any], threads: int = 4) -> None:
        self._factory = factory
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kaudit-web-q")

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._factory()
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _run(self, sql: str, params: dict[str, Any] | None) -> Result:
        res = self._client().query(sql, parameters=params or {}, settings={"readonly": 2})
        return list(res.column_names), [list(r) for r in res.result_rows]

    def query(self, sql: str, params: dict[str, Any] | None = None) -> Result:
        return self.pool.submit(self._run, sql, params).result()

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for c in self._clients:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            self._clients.clear()


def rows_as_dicts(cols: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(cols, r, strict=False)) for r in rows]
