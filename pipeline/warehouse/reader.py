"""Read-only access to the warehouse: a thread pool with one ClickHouse client per thread (chDB clients must not
be shared while streaming), plus the guard that keeps ``kaudit sql`` and ``POST /api/sql`` read-only."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import ipaddress
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.config import Settings, get_settings
from pipeline.warehouse.client import is_embedded, open_client

READ_SETTINGS: dict[str, Any] = {"readonly": 2, "max_execution_time": 120, "max_result_rows": 1_000_000,
                                 "result_overflow_mode": "break"}  # fmt: skip
READ_STATEMENTS = ("select", "with", "show", "describe", "desc", "explain", "exists")
# Table functions that read or write outside the warehouse: never from the read-only API.
FORBIDDEN_FUNCS = re.compile(
    r"\b(file|url|urlCluster|s3|s3Cluster|gcs|azureBlobStorage|hdfs|remote|remoteSecure|cluster|clusterAllReplicas|"
    r"mysql|postgresql|mongodb|redis|sqlite|jdbc|odbc|executable|input|iceberg\w*|deltaLake\w*|hudi\w*|"
    r"filesystem|python)\s*\(",
    re.I,
)


class ReadOnlyError(ValueError):
    """The statement would write, or reach outside the warehouse."""


def _strip_comments_and_strings(sql: str) -> str:
    sql = re.sub(r"--[^\n]*|#[^\n]*|/\*.*?\*/", " ", sql, flags=re.S)
    return re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`", "''", sql, flags=re.S)


def check_read_only(sql: str) -> str:
    """Return the statement (without a trailing ';') or raise ReadOnlyError saying why."""
    text = sql.strip().rstrip(";").strip()
    bare = _strip_comments_and_strings(text).strip()
    if not bare:
        raise ReadOnlyError("empty statement")
    if ";" in bare:
        raise ReadOnlyError("one statement at a time")
    first = bare.split(None, 1)[0].lower().lstrip("(")
    if first not in READ_STATEMENTS:
        raise ReadOnlyError(f"only read statements are allowed ({', '.join(s.upper() for s in READ_STATEMENTS)}); "
                            f"got {first.upper()}")  # fmt: skip
    if re.search(r"\binto\s+outfile\b", bare, re.I):
        raise ReadOnlyError("INTO OUTFILE is not allowed")
    m = FORBIDDEN_FUNCS.search(bare)
    if m:
        raise ReadOnlyError(f"table function {m.group(1)}() is not allowed here")
    if re.search(r"\bsettings\b[^)]*\breadonly\b", bare, re.I):
        raise ReadOnlyError("the readonly setting cannot be changed")
    return text


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
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="warehouse-read")

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            kwargs = {"database": self.database} if self.database else {}
            c = open_client(self.s, **kwargs)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def query(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[list[Any]]]:
        res = self._client().query(sql, parameters=params or None, settings=READ_SETTINGS)
        return list(res.column_names), [[jsonable(v) for v in row] for row in res.result_rows]

    def query_compiled(self, cq: Any) -> tuple[list[str], list[list[Any]]]:
        """A compiled query-language query (pipeline.query.CompiledQuery): listings search newest events first."""
        from pipeline.query.listing import run_compiled

        return run_compiled(self.query, cq)

    async def aquery_compiled(self, cq: Any) -> tuple[list[str], list[list[Any]]]:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.query_compiled, cq)

    def query_summary(self, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[list[Any]], int]:
        """query() plus the rows ClickHouse read (0 when the engine does not say): the cost of a query alert."""
        res = self._client().query(sql, parameters=params or None, settings=READ_SETTINGS)
        try:
            read = int((res.summary or {}).get("read_rows", 0))
        except (TypeError, ValueError):
            read = 0
        return list(res.column_names), [[jsonable(v) for v in row] for row in res.result_rows], read

    def insert(self, table: str, rows: list[list[Any]], column_names: list[str]) -> None:
        """A small synchronous insert on this thread's client (saved searches; never user SQL)."""
        self._client().insert(table, rows, column_names=column_names, settings={"async_insert": 0})

    def sql(self, sql: str) -> tuple[list[str], list[list[Any]]]:
        return self.query(check_read_only(sql))

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
