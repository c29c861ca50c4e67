"""Event listings searched newest window first (pipeline.query.listing): the same rows, in the same order, with
the same columns as the plain compiled statement, whether the first window holds the answer, the search widens
step by step, or it falls back to the plain statement."""

from __future__ import annotations

import pytest

from pipeline.bench.query import FILL, SEED
from pipeline.query import compile_query, run_compiled
from pipeline.query import listing as listing_mod
from pipeline.query.compiler import WINDOW_LIMIT, WINDOW_MARK
from pipeline.query.listing import HI, LO
from tests.conftest import migrated_database

ROWS = 30_000  # 25 ms apart: 12.5 minutes of events; the demo user every 97th event
T0_US = 1735689600000000  # FILL's first event


@pytest.fixture(scope="module")
def db(chdb_session_path):
    with migrated_database(chdb_session_path, "l") as (client, _s, _name):
        for start in range(0, ROWS, 10_000):  # three inserts: several parts
            client.command(FILL.replace("FROM numbers({n:UInt64})", f"FROM numbers({start}, 10000)"))
        yield client


@pytest.fixture()
def small_windows(monkeypatch):
    monkeypatch.setattr(listing_mod, "FIRST_WINDOW_ROWS", 600)  # 2% of the table: windows engage


class Recorder:
    def __init__(self, client) -> None:
        self.client = client
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, sql: str, params: dict) -> tuple[list[str], list]:
        self.calls.append((sql, params))
        res = self.client.query(sql, parameters=params)
        return list(res.column_names), res.result_rows

    @property
    def windows(self) -> list[tuple[int | None, int | None]]:
        return [(p.get(LO), p.get(HI)) for _s, p in self.calls if WINDOW_LIMIT in p]


def plain(client, cq):
    res = client.query(cq.sql, parameters=cq.params)
    return list(res.column_names), res.result_rows


def test_compiled_listing_has_window_sql():
    cq = compile_query(SEED[2])
    assert cq.kind == "events" and cq.limit == 100 and cq.window_sql
    assert "1 AND" not in cq.sql  # logtype="..." no longer leaves a constant in the filter
    plain_sql = cq.window_sql.replace(f" AND {WINDOW_MARK}", "").replace(f"{{{WINDOW_LIMIT}:UInt64}}", "100")
    assert plain_sql == cq.sql
    assert compile_query(SEED[2] + " sort by timestamp desc").window_sql
    assert compile_query(SEED[2] + " sort by timestamp asc").window_sql is None  # oldest first: no shortcut
    assert compile_query(SEED[2] + " sort by username").window_sql is None
    assert compile_query(SEED[2] + " limit 100000").window_sql is None  # beyond WINDOW_MAX_LIMIT
    assert compile_query(SEED[1]).window_sql is None  # aggregates run as they are


def test_first_window_holds_the_answer(db, small_windows):
    cq = compile_query('verb="list" limit 20')
    rec = Recorder(db)
    assert run_compiled(rec, cq) == plain(db, cq)
    assert len(rec.windows) == 1 and len(rec.calls) == 2  # stats + one window, no full sort
    ts = [r[0] for r in run_compiled(rec, cq)[1]]
    assert ts == sorted(ts, reverse=True) and len(ts) == 20


def test_widens_until_complete(db, small_windows):
    # the demo user: ~6 events in the first window, so the search goes on into older windows
    cq = compile_query('username="system:serviceaccount:default:demo" limit 50')
    rec = Recorder(db)
    cols, rows = run_compiled(rec, cq)
    assert (cols, rows) == plain(db, cq) and len(rows) == 50
    wins = rec.windows
    assert len(wins) >= 2 and wins[0][1] is None  # the first window is open towards the newest events
    assert all(w[1] == prev[0] for prev, w in zip(wins, wins[1:], strict=False))  # adjacent, never read twice
    assert all(w[0] is not None for w in wins)  # complete before the last step (everything older) was needed
    limits = [p[WINDOW_LIMIT] for _s, p in rec.calls[1:]]
    # each step asks only for what is missing
    assert limits[0] == 50 and limits == sorted(limits, reverse=True)


def test_fewer_matches_than_limit_reads_everything_once(db, small_windows):
    cq = compile_query(SEED[2])  # ~12 of 30,000 events match
    rec = Recorder(db)
    cols, rows = run_compiled(rec, cq)
    assert (cols, rows) == plain(db, cq) and 0 < len(rows) < 100
    wins = rec.windows
    # the last step reads all the older events
    assert len(wins) >= 2 and wins[-1][0] is None and wins[-1][1] == wins[-2][0]
    ts = [r[0] for r in rows]
    assert ts == sorted(ts, reverse=True)


END_US = T0_US + ROWS * 25_000  # just after the newest event


@pytest.mark.parametrize(
    "text, kw",
    [
        (SEED[2], {}),
        (SEED[2] + " limit 5", {}),
        ('username="system:serviceaccount:default:demo" limit 50', {}),
        ('username="nobody" limit 5', {}),  # no match at all
        ('verb="delete" include auditid, verb sort by timestamp desc limit 50', {}),
        ('verb="get" exclude sourceips limit 30', {"cluster": "prod"}),
        ('verb="get" limit 30', {"from_": "2025-01-01T00:05:00Z", "to": "2025-01-01T00:08:00Z"}),
        ('verb="get" limit 30', {"from_": "2025-01-01T00:11:00Z"}),
        ('verb="get" limit 30', {"to": "2024-12-31T00:00:00Z"}),  # before every event
        ('verb="get" limit 30', {"from_": "2025-01-02T00:00:00Z", "to": "2025-01-03T00:00:00Z"}),  # after all
        ('verb="get" limit 30', {"since": "1h"}),
        ('verb="get" sort by timestamp asc limit 30', {}),
    ],
)
def test_same_rows_as_the_plain_statement(db, small_windows, text, kw):
    cq = compile_query(text, now_us=END_US, **kw)
    assert run_compiled(Recorder(db), cq) == plain(db, cq)


def test_small_table_runs_the_plain_statement(db):
    cq = compile_query(SEED[2])  # FIRST_WINDOW_ROWS (500k) > the table: nothing to prune
    rec = Recorder(db)
    assert run_compiled(rec, cq) == plain(db, cq)
    assert rec.windows == [] and rec.calls[-1] == (cq.sql, cq.params)


def test_window_plan():
    day = 86_400_000_000
    steps = listing_mod.windows(compile_query(SEED[2]), 0, 100 * day, 100_000_000)
    assert next(steps) == 100 * day - day // 2  # 500k of 100M events: the newest 0.5 %
    assert steps.send(0) == 100 * day - 8 * day  # nothing found: 16 x as far back
    with pytest.raises(StopIteration):
        steps.send(1)  # 16 x again would pass half the table: the caller reads all the rest at once
    steps = listing_mod.windows(compile_query(SEED[2]), 0, 100 * day, 100_000_000)
    next(steps)
    assert steps.send(50) == 100 * day - 2 * day  # 50 of 100: 4 x as far back (at least)
    with pytest.raises(StopIteration):
        steps.send(100)  # complete
    # at 10M events, LIMIT 1000 would start with half of them: the plain statement right away
    assert list(listing_mod.windows(compile_query(SEED[2] + " limit 1000"), 0, 100 * day, 10_000_000)) == []
    # a time range: windows end at its end (before the newest event) and stay within it
    cq = compile_query(SEED[2], from_="1970-01-31T00:00:00Z", to="1970-02-10T00:00:00Z", now_us=100 * day)
    steps = listing_mod.windows(cq, 0, 100 * day, 100_000_000)
    assert next(steps) == 40 * day - 1 - day // 2
    with pytest.raises(StopIteration):
        steps.send(0)


def test_warehouse_runs_compiled_queries(db, small_windows, chdb_session_path):
    from pipeline.config import Settings
    from pipeline.warehouse.reader import Warehouse

    database = db.query("SELECT currentDatabase()").result_rows[0][0]
    wh = Warehouse(Settings(clickhouse_dsn=f"chdb://{chdb_session_path}"), max_workers=1, database=database)
    try:
        cq = compile_query(SEED[2] + " limit 12")
        got = wh.timed(cq.sql, cq.params, cq)
        assert got["rows"] == wh.query(cq.sql, cq.params)[1] and len(got["rows"]) == 12
        assert got["sql"] == cq.sql
    finally:
        wh.close()
