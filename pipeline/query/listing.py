"""Run a compiled query. Event listings sorted newest first read the newest events first instead of sorting
every match: ``window_sql`` runs on the newest ~``FIRST_WINDOW_ROWS`` events, then on the older window next to
it (wider, by how many rows the previous ones found), until LIMIT rows are found or the rest of the table is
read in one last step.

Each step reads only events older than every event read before, so its rows sort after the rows already found
and only complete the answer: the rows, their order and the columns are those of ``CompiledQuery.sql`` (rows
with the very same timestamps may come in another order, as they may from ``sql`` itself). At 10M events the
seed listing reads ~0.5M events instead of sorting the matches of all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from pipeline.query.compiler import DEFAULT_EVENT_LIMIT, TS, WINDOW_LIMIT, WINDOW_MARK, CompiledQuery

# (sql, params) -> (column names, rows)
QueryFn = Callable[[str, dict[str, Any]], tuple[list[str], list[Any]]]

FIRST_WINDOW_ROWS = 500_000  # events in the first window for LIMIT 100 (scaled with LIMIT)
MIN_GROWTH, MAX_GROWTH = 4, 16  # the searched span grows by 2 * LIMIT / rows found so far, clamped to these
LAST_STEP_SHARE = 0.5  # once the search would cover this share of the time range, read all the rest at once
# Answered from the parts' min/max/count, not from the columns: ~5 ms at 10M events.
STATS_SQL = (f"SELECT toUnixTimestamp64Micro(min({TS})), toUnixTimestamp64Micro(max({TS})), count() "
             "FROM audit_events")  # fmt: skip
LO, HI = "wlo", "whi"  # window bounds (µs); never clash with the compiler's p0, p1, ...
_GE = f"{TS} >= fromUnixTimestamp64Micro({{{LO}:Int64}}, 'UTC')"
_LT = f"{TS} < fromUnixTimestamp64Micro({{{HI}:Int64}}, 'UTC')"


def windows(cq: CompiledQuery, lo_us: int, hi_us: int, rows: int) -> Generator[int, int, None]:
    """Yield the lower bound (µs) of each window but the last, newest first; ``send`` back how many rows all
    windows so far found. ``lo_us``, ``hi_us``, ``rows``: the table's oldest and newest event and its size."""
    first = FIRST_WINDOW_ROWS * max(1.0, cq.limit / DEFAULT_EVENT_LIMIT)
    if rows <= first or hi_us <= lo_us:
        return
    width = (hi_us - lo_us) * first / rows  # µs that hold that many events on average
    if cq.time_range:
        lo_us, hi_us = max(lo_us, cq.time_range[0]), min(hi_us, cq.time_range[1] - 1)
    while width < (hi_us - lo_us) * LAST_STEP_SHARE:
        found = yield int(hi_us - width)
        if found >= cq.limit:
            return
        width *= min(MAX_GROWTH, max(MIN_GROWTH, 2 * cq.limit / max(found, 1)))


def run_compiled(query: QueryFn, cq: CompiledQuery) -> tuple[list[str], list[Any]]:
    """Execute ``cq`` through ``query``; the same columns and rows as ``query(cq.sql, cq.params)``."""
    if cq.window_sql is None or cq.limit <= 0:
        return query(cq.sql, cq.params)
    (lo_us, hi_us, rows), *_ = query(STATS_SQL, {})[1]
    steps = windows(cq, int(lo_us), int(hi_us), int(rows))
    got: list[Any] = []
    hi: int | None = None  # the previous window's lower bound: everything newer has been read
    try:
        lo = next(steps)
        while True:
            cond, params = (_GE, {LO: lo}) if hi is None else (f"{_GE} AND {_LT}", {LO: lo, HI: hi})
            params = {**cq.params, **params, WINDOW_LIMIT: cq.limit - len(got)}
            cols, found = query(cq.window_sql.replace(WINDOW_MARK, cond), params)
            got += found
            if len(got) >= cq.limit:
                return cols, got
            hi = lo
            lo = steps.send(len(got))
    except StopIteration:
        pass
    if hi is None:
        return query(cq.sql, cq.params)
    params = {**cq.params, HI: hi, WINDOW_LIMIT: cq.limit - len(got)}
    cols, found = query(cq.window_sql.replace(WINDOW_MARK, _LT), params)
    return cols, got + found
