"""Every operator and clause of the query language against answers computed in plain Python from the sample
files (read with pipeline.models.readers + normalize, loaded into chDB): aggregates with and without groupby,
count alone, sd, distinct, percentile, ratio, timeslice with aggregates, having, sort by an aggregate, top n,
include/exclude, and the source operators (monitor_name, monitor_group, tags) through a clusters file.
The expected values never come from SQL."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from pipeline.query import QueryError, compile_query
from pipeline.query.clusters import ClusterMap, ClustersFileError, load, parse
from pipeline.sinks.fixtures import sample_sources
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS
from tests.conftest import SAMPLES, migrated_database

EVENTS = [e for _c, evs in sample_sources(SAMPLES) for e in evs]
ANNOTATION = "apiserver.latency.k8s.io/total"
GO_UNITS = {"ns": 0.001, "us": 1, "µs": 1, "ms": 1000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
# a few events carry the apiserver's own latency (newer API servers write it; the samples predate it)
for _i, _d in ((3, "1.5ms"), (10, "2m3.25s"), (20, "750µs"), (30, "12ms"), (40, "1h0m0.5s"), (50, "800ns")):
    EVENTS[_i] = {**EVENTS[_i], "annotations": {**EVENTS[_i]["annotations"], ANNOTATION: _d}}


def go_duration_us(text: str) -> float:
    return sum(float(n) * GO_UNITS[u] for n, u in re.findall(r"([0-9.]+)(ns|us|µs|ms|s|m|h)", text))


def latency(e: dict) -> int:
    if ANNOTATION in e["annotations"]:
        return round(go_duration_us(e["annotations"][ANNOTATION]))
    return max(0, e["stage_ts"] - e["request_received_ts"])


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default, Excel's PERCENTILE.INC)."""
    xs = sorted(values)
    pos = p / 100 * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


CLUSTERS = {
    "clusters": {
        "audit2rbac": {"group": "legacy", "labels": {"env": "dev"}},
        "falco": {"group": "security", "labels": {"env": "prod", "team": "payments"}},
        "openshift": {"group": "security", "labels": {"env": "prod"}},
        "not-in-samples": "legacy",
    }
}  # aks is not in the file: no group, no labels
GROUP = {"audit2rbac": "legacy", "falco": "security", "openshift": "security"}
TAGS = {"audit2rbac": ["env=dev"], "falco": ["env=prod", "team=payments"], "openshift": ["env=prod"]}
CM = parse(CLUSTERS)


@pytest.fixture(scope="module")
def db(chdb_session_path):
    with migrated_database(chdb_session_path, "o") as (client, _s, _name):
        rows = [[{**e, "source_id": f"0:{i}"}[c] for c in EVENT_INSERT_COLUMNS] for i, e in enumerate(EVENTS)]
        client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
        yield client


def run(client, text: str, **kw):
    q = compile_query(text, clusters=CM, **kw)
    return q, [tuple(r) for r in client.query(q.sql, parameters=q.params).result_rows]


def where(pred) -> list[dict]:
    return [e for e in EVENTS if pred(e)]


def codes(evs) -> list[int]:
    return [e["responsestatus_code"] for e in evs]


def approx(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else pytest.approx(v)


def test_latency_is_the_annotation_else_the_stage_difference(db):
    q, rows = run(db, "groupby auditid, stage, max(latency) limit 100000")
    got = {(r[0], r[1]): r[3] for r in rows}
    assert got == {(e["auditid"], e["stage"]): latency(e) for e in EVENTS}
    assert latency(EVENTS[10]) == 123_250_000 and latency(EVENTS[50]) == 1  # 2m3.25s; 800ns rounds to 1 µs


def test_count_alone_and_with_a_condition(db):
    assert run(db, "count")[1] == [(len(EVENTS),)]
    q, rows = run(db, 'verb="get" count')
    assert q.columns == ["count"] and rows == [(len(where(lambda e: e["verb"] == "get")),)]
    assert run(db, "verb=nothing count")[1] == [(0,)]


def test_aggregates_without_groupby(db):
    gets = where(lambda e: e["verb"] == "get")
    q, rows = run(db, "verb=get count_distinct(username)")
    assert q.columns == ["count_distinct(username)"] and rows == [(len({e["username"] for e in gets}),)]
    assert run(db, "verb=get and count_distinct(username)")[1] == rows  # the product's "and" form
    q, rows = run(db, "verb=get count, sum(responsestatus_code), min(responsestatus_code), max(responsestatus_code), "
                      "avg(responsestatus_code), sd(responsestatus_code)")  # fmt: skip
    c = codes(gets)
    assert q.columns == ["count", "sum(responsestatus_code)", "min(responsestatus_code)", "max(responsestatus_code)",
                         "avg(responsestatus_code)", "sd(responsestatus_code)"]  # fmt: skip
    assert rows[0][:4] == (len(c), sum(c), min(c), max(c))
    assert rows[0][4] == approx(statistics.fmean(c)) and rows[0][5] == approx(statistics.stdev(c))
    assert run(db, "count(username)")[1] == [(len({e["username"] for e in EVENTS}),)]  # count(f) = count_distinct(f)


def test_sd_per_group(db):
    _q, rows = run(db, "groupby verb, sd(responsestatus_code), stddev(latency)")
    for verb, n, sd_code, sd_lat in rows:
        evs = where(lambda e, v=verb: e["verb"] == v)
        assert n == len(evs)
        if len(evs) > 1:
            assert sd_code == approx(statistics.stdev(codes(evs)))
            assert sd_lat == approx(statistics.stdev(latency(e) for e in evs))
        else:
            assert sd_code is None or math.isnan(sd_code)  # one value has no sample deviation


def test_distinct(db):
    q, rows = run(db, "responsestatus_code>=400 distinct(username)")
    assert q.columns == ["username"]
    assert [r[0] for r in rows] == sorted({e["username"] for e in EVENTS if e["responsestatus_code"] >= 400})
    q, rows = run(db, "groupby verb, distinct(responsestatus_code)")
    assert q.columns == ["verb", "count", "distinct(responsestatus_code)"]
    assert {r[0]: r[2] for r in rows} == {v: sorted({e["responsestatus_code"] for e in EVENTS if e["verb"] == v})
                                          for v in {e["verb"] for e in EVENTS}}  # fmt: skip
    _q, rows = run(db, "distinct(usergroups)")  # lists: one row per element
    assert [r[0] for r in rows] == sorted({g for e in EVENTS for g in e["usergroups"]})


@pytest.mark.parametrize("p", [0, 50, 90, 99, 99.9, 100])
def test_percentile(db, p):
    q, rows = run(db, f"percentile(latency, {p})")
    assert q.columns == [f"percentile(latency, {p:g})"]
    assert rows[0][0] == approx(percentile([latency(e) for e in EVENTS], p))
    _q, rows = run(db, f"groupby stage, percentile(responsestatus_code, {p})")
    for stage, _n, v in rows:
        assert v == approx(percentile(codes(where(lambda e, s=stage: e["stage"] == s)), p))


def test_ratio(db):
    q, rows = run(db, "ratio(responsestatus_code=403, responsestatus_code>0)")
    assert q.columns == ["ratio(responsestatus_code=403, responsestatus_code>0)"]
    n403 = len(where(lambda e: e["responsestatus_code"] == 403))
    assert rows[0][0] == approx(n403 / len(where(lambda e: e["responsestatus_code"] > 0)))
    _q, rows = run(db, 'groupby username, ratio(verb in (create, delete), verb="get") limit 100000')
    for user, n, r in rows:
        evs = where(lambda e, u=user: e["username"] == u)
        den = sum(e["verb"] == "get" for e in evs)
        assert n == len(evs)
        if den:
            assert r == approx(sum(e["verb"] in ("create", "delete") for e in evs) / den)
        else:
            assert r is None or math.isnan(r)  # nothing to divide by


def test_timeslice_with_aggregates(db):
    m10 = 600_000_000
    q, rows = run(db, "timeslice 10m avg(latency), count_distinct(username)")
    assert q.columns == ["timeslice", "avg(latency)", "count_distinct(username)"]
    want = defaultdict(list)
    for e in EVENTS:
        t = e["request_received_ts"]
        want[t - t % m10].append(e)
    got = {int(r[0].timestamp() * 1e6): r[1:] for r in rows}
    assert set(got) == set(want)
    for t, evs in want.items():
        assert got[t][0] == approx(statistics.fmean(latency(e) for e in evs))
        assert got[t][1] == len({e["username"] for e in evs})
    q, rows = run(db, "timeslice 1h groupby verb, max(latency)")
    assert q.columns == ["timeslice", "verb", "count", "max(latency)"]
    want2 = defaultdict(list)
    for e in EVENTS:
        t = e["request_received_ts"]
        want2[(t - t % (6 * m10), e["verb"])].append(latency(e))
    assert {(int(r[0].timestamp() * 1e6), r[1]): (r[2], r[3]) for r in rows} == {
        k: (len(v), max(v)) for k, v in want2.items()}  # fmt: skip


def test_having(db):
    by_user = Counter(e["username"] for e in EVENTS)
    _q, rows = run(db, "groupby username having count > 20 limit 100000")
    assert dict(rows) == {u: n for u, n in by_user.items() if n > 20} and rows
    _q, rows = run(db, "groupby username having not count <= 20")
    assert dict(rows) == {u: n for u, n in by_user.items() if n > 20}
    q, rows = run(db, "groupby verb having count_distinct(username) >= 3 and (count < 100 or max(latency) > 1000000)")
    assert q.columns == ["verb", "count"]  # having may use aggregates that are not shown
    want = {}
    for v in {e["verb"] for e in EVENTS}:
        evs = where(lambda e, v=v: e["verb"] == v)
        if len({e["username"] for e in evs}) >= 3 and (len(evs) < 100 or max(latency(e) for e in evs) > 1_000_000):
            want[v] = len(evs)
    assert dict(rows) == want and want
    _q, rows = run(db, "count having count > 1")  # without groupby: one row or none
    assert rows == [(len(EVENTS),)]
    assert run(db, f"count having count > {len(EVENTS)}")[1] == []


def test_sort_by_an_aggregate(db):
    _q, rows = run(db, "groupby username sort by count_distinct(verb) desc, username asc limit 100000")
    verbs = defaultdict(set)
    for e in EVENTS:
        verbs[e["username"]].add(e["verb"])
    assert [r[0] for r in rows] == sorted(verbs, key=lambda u: (-len(verbs[u]), u))
    _q, rows = run(db, "groupby verb, avg(latency) sort by avg(latency) asc")
    assert [r[2] for r in rows] == sorted(r[2] for r in rows)
    _q, rows = run(db, "groupby verb sort by count asc, verb asc")
    c = Counter(e["verb"] for e in EVENTS)
    assert [r[0] for r in rows] == sorted(c, key=lambda v: (c[v], v))


def test_top(db):
    c = Counter(e["username"] for e in EVENTS)
    ranked = sorted(c, key=lambda u: (-c[u], u))
    _q, rows = run(db, "groupby username top 5")
    assert [r[0] for r in rows] == ranked[:5]
    verbs = defaultdict(set)
    for e in EVENTS:
        verbs[e["username"]].add(e["verb"])
    _q, rows = run(db, "groupby username top 3 by count_distinct(verb)")
    assert [r[0] for r in rows] == sorted(verbs, key=lambda u: (-len(verbs[u]), u))[:3]
    # with timeslice: every bucket of the 3 users with the most events over the whole range
    q, rows = run(db, "timeslice 1h groupby username top 3 limit 100000")
    want = Counter()
    for e in EVENTS:
        if e["username"] in ranked[:3]:
            t = e["request_received_ts"]
            want[(t - t % 3_600_000_000, e["username"])] += 1
    assert {(int(r[0].timestamp() * 1e6), r[1]): r[2] for r in rows} == dict(want)
    # a list field (one row per element): the same answer by another plan
    g = Counter(x for e in EVENTS for x in e["usergroups"])
    top2 = sorted(g, key=lambda x: (-g[x], x))[:2]
    _q, rows = run(db, "timeslice 1h groupby usergroups top 2")
    want = Counter()
    for e in EVENTS:
        for x in e["usergroups"]:
            if x in top2:
                t = e["request_received_ts"]
                want[(t - t % 3_600_000_000, x)] += 1
    assert {(int(r[0].timestamp() * 1e6), r[1]): r[2] for r in rows} == dict(want)
    with pytest.raises(QueryError, match="top ranks groups") as err:
        compile_query("verb=get top 3")
    assert err.value.column == 10


def test_include_exclude(db):
    q, rows = run(db, "groupby verb, stage, avg(latency) exclude stage")
    assert q.columns == ["verb", "count", "avg(latency)"]
    want = defaultdict(list)
    for e in EVENTS:
        want[(e["verb"], e["stage"])].append(e)
    assert sorted(r[1] for r in rows) == sorted(len(v) for v in want.values())  # one row per (verb, stage)
    q, _rows = run(db, "groupby verb, stage include verb")
    assert q.columns == ["verb", "count"]
    q, rows = run(db, "verb=delete include username, objectref_name limit 1000")
    assert q.columns == ["username", "objectref_name"]
    assert Counter(rows) == Counter((e["username"], e["objectref_name"]) for e in EVENTS if e["verb"] == "delete")


# --- sources: monitor_name, monitor_group, tags ------------------------------------------------------------
SOURCE_CASES = [
    ('monitor_name="falco"', lambda e: e["cluster"] == "falco"),
    ('monitor_name="open*"', lambda e: e["cluster"].startswith("open")),
    ('monitor_group="security"', lambda e: GROUP.get(e["cluster"]) == "security"),
    ('monitor_group!="security"', lambda e: GROUP.get(e["cluster"]) != "security"),
    ("monitor_group in (legacy, security)", lambda e: e["cluster"] in GROUP),
    ("monitor_group is empty", lambda e: e["cluster"] not in GROUP),
    ("monitor_group is not empty", lambda e: e["cluster"] in GROUP),
    ('monitor_group="sec*"', lambda e: GROUP.get(e["cluster"]) == "security"),
    ('monitor_group contains "GAC"', lambda e: GROUP.get(e["cluster"]) == "legacy"),
    ('tags="env=prod"', lambda e: "env=prod" in TAGS.get(e["cluster"], [])),
    ('tags="team:payments"', lambda e: "team=payments" in TAGS.get(e["cluster"], [])),
    ('tags="prod"', lambda e: any(t.split("=")[1] == "prod" for t in TAGS.get(e["cluster"], []))),
    ('tags="team"', lambda e: any(t.split("=")[0] == "team" for t in TAGS.get(e["cluster"], []))),
    ('tags!="env=prod"', lambda e: "env=prod" not in TAGS.get(e["cluster"], [])),
    ("tags is empty", lambda e: not TAGS.get(e["cluster"])),
    ('tags="env=prod" and verb=create', lambda e: "env=prod" in TAGS.get(e["cluster"], []) and e["verb"] == "create"),
    ('monitor_group="security" or monitor_name="aks"', lambda e: GROUP.get(e["cluster"]) == "security" or e["cluster"] == "aks"),
]


@pytest.mark.parametrize(("text", "pred"), SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES])
def test_source_operators(db, text, pred):
    _q, rows = run(db, f"{text} count")
    assert rows == [(len(where(pred)),)]
    assert where(pred) or text == "none"


def test_groupby_sources(db):
    _q, rows = run(db, "groupby monitor_group")
    assert dict(rows) == dict(Counter(GROUP.get(e["cluster"], "") for e in EVENTS))
    _q, rows = run(db, "groupby tags")
    assert dict(rows) == dict(Counter(t for e in EVENTS for t in TAGS.get(e["cluster"], [])))
    _q, rows = run(db, "groupby monitor_name, monitor_group")
    assert {(r[0], r[1]): r[2] for r in rows} == dict(Counter((e["cluster"], GROUP.get(e["cluster"], "")) for e in EVENTS))


def test_source_operators_need_a_clusters_file(monkeypatch):
    monkeypatch.delenv("KAUDIT_CLUSTERS_FILE", raising=False)
    from pipeline.config import get_settings

    get_settings.cache_clear()
    with pytest.raises(QueryError, match="KAUDIT_CLUSTERS_FILE") as err:
        compile_query('verb=get and monitor_group="x"')
    assert err.value.column == 14
    assert compile_query('monitor_name="a"', clusters=ClusterMap())  # a cluster name needs no file


def test_clusters_file_is_read_and_reread(tmp_path: Path):
    f = tmp_path / "clusters.yaml"
    f.write_text("clusters:\n  a: {group: g1, labels: {env: prod}}\n  b: g2\n")
    cm = load(f)
    assert cm.groups == ["g1", "g2"] and cm.clusters["a"].tags == ["env=prod"]
    f.write_text("clusters:\n  a: {group: g3}\n")
    assert load(f).groups == ["g3"]
    for bad in ("clusters: [a, b]", "clusters:\n  a: {grup: x}", "clusters:\n  'bad name': {}", "{"):
        f.write_text(bad)
        with pytest.raises(ClustersFileError):
            load(f)


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("percentile(latency, 101)", "between 0 and 100", 21),
        ("percentile(latency)", '"," and a percentile', 19),
        ("groupby verb, percentile(verb, 50)", "numeric field", 26),
        ("sd(username)", "numeric field", 4),
        ("ratio(verb=get)", '"," between the two conditions', 15),
        ("ratio(verb=get, usrname=x)", 'unknown field "usrname"', 17),
        ("count_distinct(usrname)", 'did you mean "username"', 16),
        ("groupby verb having count >", "expected a number", 28),
        ("groupby verb having count = lots", "expected a number", 29),
        ("groupby verb having verb = get", "expected an aggregate", 21),
        ("groupby verb having count_before > 1", "needs before", 21),
        ("groupby verb top 0", "positive number after top", 18),
        ("groupby verb top 3 by verb", "expected an aggregate", 23),
        ("verb=get count, verb", "fields go after groupby", 17),
        ('monitor_group > "a"', "is a name", 1),
    ],
)
def test_errors_point_at_the_column(text, message, column):
    with pytest.raises(QueryError) as err:
        compile_query(text, clusters=CM)
    assert message in str(err.value) and err.value.column == column, str(err.value)


HELP_EXAMPLES = [
    "verb=delete count", "responsestatus_code=403 count_distinct(username)", "groupby verb, avg(latency), max(latency)",
    "groupby objectref_resource, sd(latency)", "groupby verb, percentile(latency, 99)",
    "responsestatus_code=403 distinct(username)", "ratio(responsestatus_code=403, responsestatus_code>0)",
    "verb=create timeslice 1h groupby objectref_resource", "timeslice 10m avg(latency)", "count before 1d",
    "groupby verb before 7d", "timeslice 1h before 1d", "groupby username having count > 20 and count_distinct(verb) >= 3",
    "groupby username sort by count_distinct(verb) desc", "groupby username top 10",
    "timeslice 1h groupby username top 5", "verb=delete include username, objectref_name", 'monitor_group="production"',
    'tags="env=prod"', 'tags="team:payments"', 'monitor_name="prod-eu"', "verb not in (get, list, watch)",
    'username startswith "system:serviceaccount:"', "objectref_namespace is empty", "sourceips is not empty",
]  # fmt: skip


def test_help_lists_every_operator_with_an_example_that_compiles():
    from pipeline.commands.query import DESCRIPTION

    cm = parse({"clusters": {"prod-eu": {"group": "production", "labels": {"env": "prod"}}}})
    for text in HELP_EXAMPLES:
        assert text in DESCRIPTION, text
        compile_query(text, since="7d", clusters=cm)
    for op in ("logtype", "monitor_name", "monitor_group", "tags", " and", " or", "ratio", "groupby", "timeslice",
               "is empty", "is not empty", "sum(", "min(", "max(", "avg(", "sd(", "distinct(", "count_distinct(",
               "count", "include", "exclude", "before", "percentile(", "having", "sort by", "top n"):  # fmt: skip
        assert op in DESCRIPTION, op
