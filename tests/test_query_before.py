"""`before` against answers computed in plain Python from the sample files, for overlapping and disjoint periods
and every clause that combines with it (count alone, groupby, aggregates, timeslice, timeslice + groupby).

An event inside both periods (they overlap when the range is longer than the shift) counts in its own bucket
of the current series and in the shifted bucket of the earlier series."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

import pytest

from pipeline.query import compile_query
from pipeline.sinks.fixtures import sample_sources
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS
from tests.conftest import SAMPLES, migrated_database

EVENTS = [e for _c, evs in sample_sources(SAMPLES) for e in evs]
H = 3600 * 1_000_000
M = 60 * 1_000_000
T0 = 1505159400_000000  # 2017-09-11T19:50:00Z: the audit2rbac demo log runs from here for about 40 minutes
F0 = 1540468800_000000  # 2018-10-25T12:00:00Z: Falco's traces, over two days
PERIODS = {  # name: (from µs, to µs, before seconds)
    "overlapping": (T0, T0 + 40 * M, 600),  # 40 min shown, shifted by 10: 30 minutes lie in both periods
    "overlapping-odd": (T0 - 10 * M, T0 + 45 * M, 1020),  # a shift that is no multiple of the slice
    "overlapping-days": (F0, F0 + 27 * H, 86400),  # 27 h shown, before 1d: 3 h in both
    "disjoint": (T0 + 10 * M, T0 + 20 * M, 600),  # adjacent periods
    "disjoint-days": (F0 + 21 * H, F0 + 27 * H, 86400),  # a day apart
    "far": (T0 + 24 * H, T0 + 25 * H, 86400),  # the day after: the current period is empty
}


@pytest.fixture(scope="module")
def db(chdb_session_path):
    with migrated_database(chdb_session_path, "b") as (client, _s, _name):
        rows = [[{**e, "source_id": f"0:{i}"}[c] for c in EVENT_INSERT_COLUMNS] for i, e in enumerate(EVENTS)]
        client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
        yield client


def run(client, text: str, period: str):
    lo, hi, _b = PERIODS[period]
    q = compile_query(f"{text} limit 1000000", from_=str(lo / 1e6), to=str(hi / 1e6))
    return q, client.query(q.sql, parameters=q.params).result_rows


def split(period: str) -> tuple[list[dict], list[dict], int]:
    """(events of the current period, events of the earlier period, shift µs), chosen by plain comparisons."""
    lo, hi, b = PERIODS[period]
    b_us = b * 1_000_000
    cur = [e for e in EVENTS if lo <= e["request_received_ts"] < hi]
    prev = [e for e in EVENTS if lo - b_us <= e["request_received_ts"] < hi - b_us]
    return cur, prev, b_us


def test_the_periods_are_what_their_names_say():
    for name in ("overlapping", "overlapping-odd", "overlapping-days"):
        cur, prev, _ = split(name)
        both = {id(e) for e in cur} & {id(e) for e in prev}
        assert both and len(both) < len(cur), name  # some events in both periods, not all
    for name in ("disjoint", "disjoint-days"):
        cur, prev, _ = split(name)
        assert cur and prev and not ({id(e) for e in cur} & {id(e) for e in prev}), name
    cur, prev, _ = split("far")
    assert not cur and prev


@pytest.mark.parametrize("period", PERIODS)
def test_count_before(db, period):
    cur, prev, _ = split(period)
    q, rows = run(db, f'verb!="watch" count before {PERIODS[period][2]}s', period)
    assert q.columns == ["count", "count_before"]
    want = (sum(e["verb"] != "watch" for e in cur), sum(e["verb"] != "watch" for e in prev))
    assert [tuple(r) for r in rows] == [want]


@pytest.mark.parametrize("period", PERIODS)
def test_groupby_before(db, period):
    cur, prev, _ = split(period)
    q, rows = run(db, f"groupby verb before {PERIODS[period][2]}s", period)
    assert q.columns == ["verb", "count", "count_before"]
    c, p = Counter(e["verb"] for e in cur), Counter(e["verb"] for e in prev)
    assert {r[0]: (r[1], r[2]) for r in rows} == {v: (c[v], p[v]) for v in set(c) | set(p)}


@pytest.mark.parametrize("period", PERIODS)
def test_aggregates_before(db, period):
    cur, prev, _ = split(period)
    q, rows = run(db, f"groupby username, count_distinct(verb), max(responsestatus_code), "
                      f"avg(responsestatus_code) before {PERIODS[period][2]}s", period)  # fmt: skip
    assert q.columns == ["username", "count", "count_before", "count_distinct(verb)", "count_distinct(verb)_before",
                         "max(responsestatus_code)", "max(responsestatus_code)_before",
                         "avg(responsestatus_code)", "avg(responsestatus_code)_before"]  # fmt: skip
    got = {r[0]: r[1:] for r in rows}
    for user in {e["username"] for e in cur + prev}:
        a = [e for e in cur if e["username"] == user]
        b = [e for e in prev if e["username"] == user]
        r = got[user]
        assert r[:4] == (len(a), len(b), len({e["verb"] for e in a}), len({e["verb"] for e in b}))
        assert r[4:6] == (max((e["responsestatus_code"] for e in a), default=0),
                          max((e["responsestatus_code"] for e in b), default=0))  # fmt: skip
        for got_avg, evs in ((r[6], a), (r[7], b)):
            if evs:
                assert got_avg == pytest.approx(statistics.fmean(e["responsestatus_code"] for e in evs))


def _buckets(cur: list[dict], prev: list[dict], b_us: int, slice_us: int, key=lambda e: ()) -> dict:
    out: dict = defaultdict(lambda: [0, 0])
    for e in cur:
        t = e["request_received_ts"]
        out[(t - t % slice_us, *key(e))][0] += 1
    for e in prev:
        t = e["request_received_ts"] + b_us  # shown at the time it would have in the current period
        out[(t - t % slice_us, *key(e))][1] += 1
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize("period", PERIODS)
@pytest.mark.parametrize("slice_s", [600, 3600])
def test_timeslice_before(db, period, slice_s):
    cur, prev, b_us = split(period)
    q, rows = run(db, f"timeslice {slice_s}s before {PERIODS[period][2]}s", period)
    assert q.columns == ["timeslice", "count", "count_before"]
    got = {(int(r[0].timestamp() * 1e6),): (r[1], r[2]) for r in rows}
    assert got == _buckets(cur, prev, b_us, slice_s * 1_000_000)
    assert sum(v[0] for v in got.values()) == len(cur) and sum(v[1] for v in got.values()) == len(prev)
    lo, hi, _ = PERIODS[period]
    assert all(lo - slice_s * 1_000_000 < k[0] < hi for k in got)  # everything is drawn on the current axis


@pytest.mark.parametrize("period", PERIODS)
def test_timeslice_groupby_before(db, period):
    cur, prev, b_us = split(period)
    q, rows = run(db, f"timeslice 10m groupby verb, stage before {PERIODS[period][2]}s", period)
    assert q.columns == ["timeslice", "verb", "stage", "count", "count_before"]
    got = {(int(r[0].timestamp() * 1e6), r[1], r[2]): (r[3], r[4]) for r in rows}
    assert got == _buckets(cur, prev, b_us, 600_000_000, key=lambda e: (e["verb"], e["stage"]))


@pytest.mark.parametrize("period", ["overlapping", "overlapping-days", "disjoint"])
def test_timeslice_aggregate_before(db, period):
    cur, prev, b_us = split(period)
    q, rows = run(db, f"timeslice 1h max(responsestatus_code) before {PERIODS[period][2]}s", period)
    assert q.columns == ["timeslice", "max(responsestatus_code)", "max(responsestatus_code)_before"]
    want: dict = defaultdict(lambda: [0, 0])
    for role, evs, shift in ((0, cur, 0), (1, prev, b_us)):
        for e in evs:
            t = e["request_received_ts"] + shift
            k = t - t % H
            want[k][role] = max(want[k][role], e["responsestatus_code"])
    assert {int(r[0].timestamp() * 1e6): (r[1], r[2]) for r in rows} == {k: tuple(v) for k, v in want.items()}


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    pos = p / 100 * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@pytest.mark.parametrize("period", ["overlapping", "overlapping-odd", "overlapping-days", "disjoint"])
def test_timeslice_every_aggregate_before(db, period):
    cur, prev, b_us = split(period)
    slice_us = 3600_000_000 if "days" in period else 600_000_000
    q, rows = run(db, f"timeslice {slice_us // 1_000_000}s groupby verb, avg(responsestatus_code), "
                      f"count_distinct(username), percentile(responsestatus_code, 50), sd(responsestatus_code), "
                      f"ratio(responsestatus_code=403, responsestatus_code>0), distinct(stage) "
                      f"before {PERIODS[period][2]}s", period)  # fmt: skip
    n = len(q.columns)
    assert q.columns[:4] == ["timeslice", "verb", "count", "count_before"] and n == 16
    want: dict = defaultdict(lambda: ([], []))
    for role, evs, shift in ((0, cur, 0), (1, prev, b_us)):
        for e in evs:
            t = e["request_received_ts"] + shift
            want[(t - t % slice_us, e["verb"])][role].append(e)
    got = {(int(r[0].timestamp() * 1e6), r[1]): r[2:] for r in rows}
    assert set(got) == set(want)
    for k, (a, b) in want.items():
        g = got[k]
        for i, evs in enumerate((a, b)):  # current, then before, for each aggregate
            codes = [e["responsestatus_code"] for e in evs]
            assert g[0 + i] == len(evs)
            if evs:
                assert g[2 + i] == pytest.approx(statistics.fmean(codes))
                assert g[6 + i] == pytest.approx(_pct(codes, 50))
                pos = sum(c > 0 for c in codes)
                if pos:
                    assert g[10 + i] == pytest.approx(sum(c == 403 for c in codes) / pos)
                if len(evs) > 1:
                    assert g[8 + i] == pytest.approx(statistics.stdev(codes))
            assert g[4 + i] == len({e["username"] for e in evs})
            assert g[12 + i] == sorted({e["stage"] for e in evs})


@pytest.mark.parametrize("period", ["overlapping", "disjoint"])
def test_timeslice_before_with_having_and_top(db, period):
    cur, prev, b_us = split(period)
    both = _buckets(cur, prev, b_us, 600_000_000, key=lambda e: (e["username"],))
    _q, rows = run(db, f"timeslice 10m groupby username before {PERIODS[period][2]}s having count_before >= 2", period)
    assert {(int(r[0].timestamp() * 1e6), r[1]): (r[2], r[3]) for r in rows} == {
        k: v for k, v in both.items() if v[1] >= 2}  # fmt: skip
    totals = Counter(e["username"] for e in cur)
    top = sorted(totals, key=lambda u: (-totals[u], u))[:2]
    _q, rows = run(db, f"timeslice 10m groupby username top 2 before {PERIODS[period][2]}s", period)
    assert {(int(r[0].timestamp() * 1e6), r[1]): (r[2], r[3]) for r in rows} == {
        k: v for k, v in both.items() if k[1] in top}  # fmt: skip
