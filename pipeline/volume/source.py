"""``run(sql, params) -> rows`` for the CLI: the warehouse directly (server DSN, or an embedded chDB nobody
holds), else the owner's read-only SQL API with the parameters written as ClickHouse literals."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from pipeline.config import Settings
from pipeline.volume import Run


def literal(v: Any) -> str:
    """A ClickHouse literal for a parameter value (strings quoted and escaped; ClickHouse's parser reads them)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(literal(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def inline(sql: str, params: dict[str, Any]) -> str:
    """Replace ``{name:Type}`` placeholders by literals (for the SQL API, which takes no parameters)."""
    import re

    return re.sub(r"\{(\w+):[^}]+\}", lambda m: literal(params[m.group(1)]), sql)


@contextlib.contextmanager
def warehouse_runner(s: Settings) -> Iterator[Run]:
    from pipeline.query.execute import run as execute
    from pipeline.warehouse.client import WarehouseLockedError, is_embedded
    from pipeline.warehouse.reader import Warehouse

    wh = None
    if not s.api_url:
        wh = Warehouse(s, max_workers=1)
    state = {"api": bool(s.api_url)}

    def run(sql: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        if not state["api"] and wh is not None:
            try:
                return wh.query(sql, params)[1]
            except WarehouseLockedError:
                if not is_embedded(s.effective_clickhouse_dsn):
                    raise
                state["api"] = True
            except Exception as exc:
                if "Cannot lock file" not in str(exc) and "Code: 76" not in str(exc):
                    raise
                state["api"] = True
        return execute(s.model_copy(update={"api_url": s.api_url or f"http://{s.api_host}:{s.api_port}"}),
                       sql=inline(sql, params))["rows"]  # fmt: skip

    try:
        yield run
    finally:
        if wh is not None:
            wh.close()
