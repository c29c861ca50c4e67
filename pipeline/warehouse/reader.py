"""Read-only access to the warehouse: a thread pool with one ClickHouse client per thread (chDB clients must not
be shared while streaming). Every read runs under the limits of ``sqlguard.limits_from`` (Settings
``query_max_*``); raw SQL from ``kaudit sql`` and ``POST /api/sql`` goes through ``sqlguard.check_statement``
first, which lets ClickHouse's parser decide what the statement touches (see pipeline/warehouse/sqlguard.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.config import Settings, get_settings
from pipeline.warehouse.client import is_embedded, open_client
from pipeline.warehouse.sqlguard import (
    EXISTING_TABLES_SQL,
    Checked,
    LimitExceeded,
    ReadOnlyError,
    check_statement,
    cluster_filters,
    limit_error,
    limits_from,
    scope_to_clusters,
)

__all__ = ["Checked", "LimitExceeded", "ReadOnlyError", "Warehouse", "jsonable"]


def jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        return v.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(jsonable(k)): jsonable(x) for k, x in v.items()}
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v


class Warehouse:
    """query(sql, params) -> (columns, rows) with JSON-friendly values; aquery() for asyncio callers."""

    def __init__(self, s: Settings | None = None, max_workers: int = 4, database: str | None = None) -> None:
        self.s = s or get_settings()
        self.database = database
        self.embedded = is_embedded(self.s.effective_clickhouse_dsn)
        self.limits = limits_from(self.s, reader_profile=bool(self.s.reader_user) and not self.embedded)
        self._existing: tuple[float, list[str]] | None = None
        self._database: str | None = None
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="warehouse-read")

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            kwargs: dict[str, Any] = {"database": self.database} if self.database else {}
            if self.s.reader_user and not self.embedded:  # the dedicated read-only user (kaudit migrate --reader-user)
                kwargs.update(username=self.s.reader_user, password=self.s.reader_password, reader=True)
            c = open_client(self.s, **kwargs)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def query(
        self, sql: str, params: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> tuple[list[str], list[list[Any]]]:
        """Run trusted SQL (compiled queries, widgets, the guard's checked text) under the read limits.

        Raises LimitExceeded when a limit stopped it; other engine errors pass through."""
        try:  # the limits last: readonly=1 closes the SETTINGS clause
            res = self._client().query(sql, parameters=params or None, settings={**(settings or {}), **self.limits})
        except Exception as exc:  # noqa: BLE001
            lim = limit_error(exc)
            if lim is not None:
                raise lim from None
            raise
        cap = self.limits.get("max_result_rows") or 0
        if cap and len(res.result_rows) > cap:  # the engine skips result limits for some plans (no table read)
            raise LimitExceeded("max_result_rows", f"the query stopped at the limit max_result_rows: more than "
                                f"{cap} rows")  # fmt: skip
        return list(res.column_names), [[jsonable(v) for v in row] for row in res.result_rows]

    def _rows(self, sql: str, params: dict[str, Any]) -> list[list[Any]]:
        """The guard's own statements (parse, rebuild) on this warehouse's engine and database."""
        return self.query(sql, params)[1]

    def _existing_tables(self) -> list[str]:
        """Tables of the current database (cached a minute); empty where the reader may not list them."""
        now = time.monotonic()
        if self._existing is None or now - self._existing[0] > 60:
            try:
                names = [r[0] for r in self._rows(EXISTING_TABLES_SQL, {})]
            except Exception:  # noqa: BLE001 - a server reader without access to system.tables: its grants decide
                names = []
            self._existing = (now, names)
        return self._existing[1]

    def current_database(self) -> str:
        if self._database is None:
            self._database = self._rows("SELECT currentDatabase()", {})[0][0]
        return self._database

    def cluster_settings(self, clusters: Iterable[str]) -> dict[str, Any]:
        """Settings confining trusted SQL (compiled queries, widgets) to ``clusters``: pass to query(settings=)."""
        return cluster_filters(self.current_database(), clusters)

    def check(self, sql: str) -> Checked:
        """Raise ReadOnlyError unless ClickHouse's parser shows ``sql`` is one SELECT of kaudit's tables."""
        return check_statement(self._rows, sql, existing=self._existing_tables())

    def prepare(self, sql: str, clusters: Iterable[str] | None = None) -> tuple[str, dict[str, Any]]:
        """(sql, settings) to run a user's statement: checked, and confined to ``clusters`` unless None."""
        checked = self.check(sql)
        if clusters is None:
            return checked.sql, {}
        return scope_to_clusters(self._rows, checked, clusters, self._existing_tables())

    def query_compiled(self, cq: Any) -> tuple[list[str], list[list[Any]]]:
        """A compiled query-language query (pipeline.query.CompiledQuery): listings search newest events first."""
        from pipeline.query.listing import run_compiled

        return run_compiled(self.query, cq)

    async def aquery_compiled(self, cq: Any) -> tuple[list[str], list[list[Any]]]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.query_compiled, cq)

    def sql(self, sql: str, clusters: Iterable[str] | None = None) -> tuple[list[str], list[list[Any]]]:
        """A user's raw SQL: refused (ReadOnlyError) unless the guard accepts it; run under the limits."""
        stmt, settings = self.prepare(sql, clusters)
        return self.query(stmt, None, settings)

    async def asql(self, sql: str, clusters: Iterable[str] | None = None) -> tuple[list[str], list[list[Any]]]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.sql, sql, clusters)

    def timed_sql(self, sql: str, clusters: Iterable[str] | None = None) -> dict[str, Any]:
        """The API's answer shape for a user's raw SQL ("sql" is the statement as executed)."""
        t0 = time.perf_counter()
        stmt, settings = self.prepare(sql, clusters)
        cols, rows = self.query(stmt, None, settings)
        return {"columns": cols, "rows": rows, "sql": stmt, "params": {},
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)}  # fmt: skip

    async def aquery(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[list[Any]]]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.query, sql, params)

    def timed(self, sql: str, params: dict[str, Any] | None = None, cq: Any = None) -> dict[str, Any]:
        t0 = time.perf_counter()
        cols, rows = self.query_compiled(cq) if cq is not None else self.query(sql, params)
        return {"columns": cols, "rows": rows, "sql": sql, "params": jsonable(params or {}),
                "elapsed_ms": round((time.perf_counter() - t0) * 1000, 1)}  # fmt: skip

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for c in self._clients:
                try:
                    c.close()
                except Exception:  # noqa: BLE001, S110
                    pass
            self._clients.clear()
