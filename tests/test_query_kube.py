"""The query language over a real kube-apiserver's own audit log (1.37, infra/control-plane/): the scenario's
requests logged by the API server, read with pipeline.models.readers + normalize, loaded into chDB, and every
operator compared with answers computed in plain Python from the same events. The API server writes the
apiserver.latency.k8s.io/* annotations only for slow non-long-running requests (none in this scenario), so
`latency` is stage_ts - request_received_ts here; tests/test_query_operators.py covers the annotation."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

import pytest

from pipeline.devcluster import LocalCluster, scenario
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import RawEvent, read_events
from pipeline.query import compile_query
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS
from tests.conftest import migrated_database
from tests.kube import free_port, require_binaries
from tests.test_query_operators import ANNOTATION, approx, go_duration_us, percentile

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def logged(tmp_path_factory, chdb_session_path):
    require_binaries()
    tmp = tmp_path_factory.mktemp("kq")
    kc = LocalCluster(state=tmp / "k8s", port=free_port(span=3), cluster="local", webhook="none")
    kc.prepare()
    kc.up()
    try:
        scenario.coverage(kc)
        for _ in range(2):  # watches of 1 s: latencies far from the others'
            kc.request("GET", "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1")
    finally:
        kc.down()
    events = [normalize_event(item.event, "local") for f in kc.audit_log_files()
              for item in read_events(f.read_bytes()) if isinstance(item, RawEvent)]  # fmt: skip
    with migrated_database(chdb_session_path, "k") as (client, _s, _db):
        rows = [[{**e, "source_id": f"0:{i}"}[c] for c in EVENT_INSERT_COLUMNS] for i, e in enumerate(events)]
        client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
        yield client, events


def run(client, text: str, **kw):
    q = compile_query(f"{text} limit 1000000", **kw)
    return q, [tuple(r) for r in client.query(q.sql, parameters=q.params).result_rows]


def lat(e: dict) -> int:
    if ANNOTATION in e["annotations"]:
        return round(go_duration_us(e["annotations"][ANNOTATION]))
    return max(0, e["stage_ts"] - e["request_received_ts"])


def test_the_log_is_a_real_mix(logged):
    _c, events = logged
    assert len(events) > 200
    assert {403, 200, 201} <= {e["responsestatus_code"] for e in events}


def test_counts_groupby_having_top(logged):
    client, events = logged
    assert run(client, "count")[1] == [(len(events),)]
    _q, rows = run(client, "groupby verb, objectref_resource")
    assert {(r[0], r[1]): r[2] for r in rows} == dict(Counter((e["verb"], e["objectref_resource"]) for e in events))
    users = Counter(e["username"] for e in events)
    assert dict(run(client, "groupby username having count >= 10")[1]) == {u: n for u, n in users.items() if n >= 10}
    assert [r[0] for r in run(client, "groupby username top 3")[1]] == sorted(users, key=lambda u: (-users[u], u))[:3]
    denied = Counter(e["username"] for e in events if e["responsestatus_code"] == 403)
    assert dict(run(client, "responsestatus_code=403 groupby username")[1]) == dict(denied) and denied


def test_latency_aggregates(logged):
    client, events = logged
    done = [e for e in events if e["stage"] == "ResponseComplete"]
    _q, rows = run(client, "stage=ResponseComplete groupby verb, avg(latency), max(latency), sd(latency), "
                           "percentile(latency, 50), percentile(latency, 99)")  # fmt: skip
    by = defaultdict(list)
    for e in done:
        by[e["verb"]].append(lat(e))
    got = {r[0]: r[1:] for r in rows}
    assert set(got) == set(by)
    for verb, xs in by.items():
        n, avg, mx, sd, p50, p99 = got[verb]
        assert (n, mx) == (len(xs), max(xs)) and avg == approx(statistics.fmean(xs))
        assert sd == (approx(statistics.stdev(xs)) if len(xs) > 1 else None) or len(xs) < 2
        assert p50 == approx(percentile(xs, 50)) and p99 == approx(percentile(xs, 99))


def test_ratio_distinct_count_distinct(logged):
    client, events = logged
    n403 = sum(e["responsestatus_code"] == 403 for e in events)
    n = sum(e["responsestatus_code"] > 0 for e in events)
    assert run(client, "ratio(responsestatus_code=403, responsestatus_code>0)")[1][0][0] == approx(n403 / n)
    assert [r[0] for r in run(client, "distinct(verb)")[1]] == sorted({e["verb"] for e in events})
    assert run(client, "verb in (create, delete) count_distinct(objectref_resource)")[1] == [
        (len({e["objectref_resource"] for e in events if e["verb"] in ("create", "delete")}),)]  # fmt: skip


def test_timeslice_before_overlapping(logged):
    client, events = logged
    ts = sorted(e["request_received_ts"] for e in events)
    lo, hi = ts[0] - ts[0] % 1_000_000, (ts[-1] // 1_000_000 + 1) * 1_000_000  # whole seconds: exact as text
    shift = max(1, (hi - lo) // 3_000_000)  # a third of the span (s): the periods overlap
    q, rows = run(client, f"timeslice 1s before {shift}s", from_=str(lo // 1_000_000), to=str(hi // 1_000_000))
    want: dict = defaultdict(lambda: [0, 0])
    b = shift * 1_000_000
    for e in events:
        t = e["request_received_ts"]
        if lo <= t < hi:
            want[t - t % 1_000_000][0] += 1
        if lo - b <= t < hi - b:
            want[(t + b) - (t + b) % 1_000_000][1] += 1
    assert {int(r[0].timestamp() * 1e6): (r[1], r[2]) for r in rows} == {k: tuple(v) for k, v in want.items()}
    assert sum(v[1] for v in want.values()) > 0
