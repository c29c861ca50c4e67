"""A thousand clusters: per-cluster metric series stay within the cardinality budget with exact totals, tokens and
readers files of 1,000 entries load, reload and map every token to its cluster with one hash per request, 1,000
realistic cluster names spread over the raw partitions as librdkafka's partitioner puts them (checked against a
real broker), and 1,000 clusters posting concurrently through a real bridge, worker and sink arrive exactly."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from prometheus_client import generate_latest

from pipeline import config
from pipeline.access import readers as readers_mod
from pipeline.access.readers import Readers
from pipeline.access.tokens import hash_token
from pipeline.bench import clusters as B
from pipeline.config import Settings
from pipeline.ingest.bridge import auth as auth_mod
from pipeline.ingest.bridge.auth import Authenticator
from pipeline.ingest.bridge.metrics import OTHER, BridgeMetrics, ClusterLabels

N = 1000


def test_cluster_names_are_distinct_valid_and_realistic() -> None:
    names = B.cluster_names(N)
    assert len(set(names)) == N
    assert all(auth_mod.CLUSTER_RE.match(n) for n in names)
    assert names[17] == "stage-ap-south-1-a-017" and names[999] == "qa-ap-south-1-c-999"


@pytest.mark.parametrize("budget", [200, 0, 1000, 5000])
def test_metrics_budget_with_1000_clusters(budget: int) -> None:
    """/metrics holds at most budget + 1 cluster values per metric; sums are the true totals; the first
    ``budget`` clusters are exact under their own name; _other holds exactly the rest."""
    m = BridgeMetrics(budget)
    names = B.cluster_names(N)
    events, batches, size, dead = Counter(), Counter(), Counter(), Counter()
    for rnd in range(3):
        for i, c in enumerate(names):
            e, b, d = (i * 7 + rnd) % 50 + 1, (i * 131) % 4000 + 10, (i + rnd) % 3
            m.count_batch(c, e, b, d)
            events[c] += e
            batches[c] += 1
            size[c] += b
            dead[c] += d
    series = B.metric_series(generate_latest(m.registry).decode())
    truth = {"kaudit_bridge_events_total": events, "kaudit_bridge_batches_total": batches,
             "kaudit_bridge_bytes_total": size, "kaudit_bridge_deadletter_items_total": dead}  # fmt: skip
    named = names[: min(budget, N)]
    for metric, true in truth.items():
        got = series[metric]
        assert len(got) <= budget + 1, metric
        assert len(got) == min(budget, N) + (1 if budget < N else 0)
        assert sum(got.values()) == sum(true.values()), metric
        assert all(got[c] == true[c] for c in named), metric
        if budget < N:
            assert got[OTHER] == sum(true[c] for c in names[budget:])
        else:
            assert OTHER not in got
    gauge = [s for f in m.registry.collect() if f.name == "kaudit_bridge_cluster_labels" for s in f.samples]
    assert gauge[0].value == min(budget, N)
    assert B.check_budget(series, budget, events, batches) == []
    assert B.check_budget(series, budget, events + Counter({"x": 1}), batches)  # the check can fail


def test_cluster_labels_are_stable_and_bounded() -> None:
    lab = ClusterLabels(2)
    assert [lab(c) for c in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]
    assert len(lab) == 2 and len(lab._named) == 2  # unnamed clusters are not remembered


def test_only_the_bridge_labels_by_cluster_and_through_the_budget() -> None:
    """Every component's registry: a metric with a cluster label must be one of the bridge's budgeted ones."""
    from prometheus_client import REGISTRY

    from pipeline.access import audit as _api  # noqa: F401 - registers the query API's counters
    from pipeline.agents.metrics import WorkerMetrics
    from pipeline.notify.metrics import NotifyMetrics
    from pipeline.searches import alerts as _alerts  # noqa: F401 - query alert metrics
    from pipeline.sinks import metrics as _sink  # noqa: F401

    budgeted = {"kaudit_bridge_events", "kaudit_bridge_batches", "kaudit_bridge_bytes", "kaudit_bridge_deadletter_items"}
    found = set()
    for reg in (BridgeMetrics().registry, WorkerMetrics().registry, NotifyMetrics().registry, REGISTRY):
        for collector in set(reg._names_to_collectors.values()):
            if "cluster" in getattr(collector, "_labelnames", ()):
                found.add(collector._name)
    assert found == budgeted


def _tokens_doc(tokens: dict[str, str], hashed: bool) -> bytes:
    return orjson.dumps({"clusters": {c: hash_token(t) if hashed else t for c, t in tokens.items()}})


@pytest.mark.parametrize("hashed", [True, False])
def test_tokens_file_of_1000_entries_loads_reloads_and_maps_each_token(tmp_path: Path, monkeypatch, hashed: bool):
    names = B.cluster_names(N)
    path = tmp_path / "tokens.json"
    tokens = B.write_tokens_file(path, names, hashed=hashed)
    auth = Authenticator(tokens_file=path)
    t0 = time.perf_counter()
    auth.load()
    print(f"tokens file of {N} {'hashed' if hashed else 'plain'} tokens loaded in {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert len(auth._table) == N
    digests = []
    real = auth_mod._digest
    monkeypatch.setattr(auth_mod, "_digest", lambda t: digests.append(t) or real(t))
    for i, c in enumerate(names):
        assert auth.check(c, f"Bearer {tokens[c]}", None).status == 0
        assert auth.check(names[(i + 1) % N], f"Bearer {tokens[c]}", None).status == 403  # not another's
    assert len(digests) == 2 * N  # one hash per request, whatever the number of entries
    # rotate every token; the new file replaces the table, old tokens stop working
    st = path.stat()
    new = B.write_tokens_file(path, names, hashed=hashed)
    import os

    os.utime(path, (st.st_atime, st.st_mtime + 2))
    t0 = time.perf_counter()
    assert auth.reload(only_if_changed=True)
    print(f"reloaded in {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert not auth.reload(only_if_changed=True)  # unchanged: not re-read
    assert all(auth.check(c, f"Bearer {new[c]}", None).status == 0 for c in names)
    assert all(auth.check(c, f"Bearer {tokens[c]}", None).status == 401 for c in names)
    # a broken version keeps the 1,000 tokens
    path.write_bytes(b"{broken")
    os.utime(path, (st.st_atime, st.st_mtime + 4))
    assert not auth.reload(only_if_changed=True)
    assert all(auth.check(c, f"Bearer {new[c]}", None).status == 0 for c in names)


def test_readers_file_of_1000_readers_maps_each_token_with_one_hash(tmp_path: Path, monkeypatch) -> None:
    names = B.cluster_names(N)
    path = tmp_path / "readers.json"
    path.write_bytes(orjson.dumps({"readers": {f"team-{c}": {"token": hash_token(f"r-{c}") if i % 2 else f"r-{c}",
                                                            "clusters": [c]} for i, c in enumerate(names)}}))  # fmt: skip
    r = Readers(path, admin_token="legacy-admin")
    t0 = time.perf_counter()
    r.load()
    print(f"readers file of {N} readers loaded in {(time.perf_counter() - t0) * 1000:.1f} ms")
    digests = []
    real = readers_mod.token_digest
    monkeypatch.setattr(readers_mod, "token_digest", lambda t: digests.append(t) or real(t))
    for c in names:
        assert r.authenticate(f"r-{c}").allowed() == [c]
    assert r.authenticate("nope") is None and r.authenticate("legacy-admin").is_admin
    assert len(digests) == N + 2
    # reload with a different mapping: every reader now sees the next cluster
    path.write_bytes(orjson.dumps({"readers": {f"team-{c}": {"token": f"r-{c}", "clusters": [names[(i + 1) % N]]}
                                               for i, c in enumerate(names)}}))  # fmt: skip
    r.load()
    assert all(r.authenticate(f"r-{c}").allowed() == [names[(i + 1) % N]] for i, c in enumerate(names))
    assert r.authenticate("legacy-admin").is_admin


@pytest.mark.parametrize("partitions", [4, 8, 16, 32])
def test_1000_cluster_names_spread_over_the_raw_partitions(partitions: int) -> None:
    """Every partition's share is within 4 standard deviations of a uniform random assignment (binomial):
    [fair - 4 sigma, fair + 4 sigma]; at the default 4 partitions that is 250 +- 55 clusters."""
    spread = B.spread(B.cluster_names(N), partitions)
    fair, p = N / partitions, 1 / partitions
    sigma = math.sqrt(N * p * (1 - p))
    assert sum(spread.values()) == N and len(spread) == partitions
    assert all(fair - 4 * sigma <= n <= fair + 4 * sigma for n in spread.values()), (sorted(spread.values()), fair, sigma)


def test_the_producer_sets_no_partitioner() -> None:
    """librdkafka's default (consistent_random: CRC-32 of the key) is what B.librdkafka_partition reproduces."""
    from pipeline.kafka.producer import producer_config

    assert "partitioner" not in producer_config(Settings())
    assert B.librdkafka_partition(b"123456789", 2**32) == 0xCBF43926  # CRC-32's check value (librdkafka's rd_crc32)


def test_keyed_records_land_where_the_partitioner_says(settings: Settings) -> None:
    """Real Kafka: one record per cluster through the project's producer; each is on CRC-32(key) % partitions."""
    from pipeline.kafka.producer import make_producer

    names = B.cluster_names(N)
    prod = make_producer(settings)
    landed: dict[str, int] = {}

    def done(err, msg) -> None:
        assert err is None, err
        landed[msg.key().decode()] = msg.partition()

    for c in names:
        prod.produce(settings.topic(config.RAW), b"{}", key=c.encode(), on_delivery=done)
    assert prod.flush(30) == 0
    assert len(landed) == N
    assert {c: landed[c] for c in names} == {c: B.librdkafka_partition(c.encode(), settings.raw_partitions) for c in names}
    read_back = B.raw_partitions_of(settings, N)
    assert read_back == {c: {landed[c]} for c in names}


def test_1000_clusters_post_concurrently_and_arrive_exactly(settings: Settings, tmp_path: Path) -> None:
    """1,000 clusters x 2 batches, 200 in flight, each cluster with its own (hashed) token, through a real bridge,
    worker and sink: every cluster's count in the warehouse is what the bridge acknowledged, the bridge's /metrics
    stays within the budget (100 + _other) with exact sums, every cluster's raw records share one partition."""
    budget = 100
    s = settings.model_copy(update={"metrics_max_clusters": budget})
    names = B.cluster_names(N)
    tokens_path = tmp_path / "tokens.json"
    tokens = B.write_tokens_file(tokens_path, names)
    items = B.work_items(names, 2, 5)
    total = sum(n for _, _, n in items)
    with B.running(s, tokens_path, tmp_path / "logs") as p:
        res = asyncio.run(B.post_all(p.bridge, items, tokens, concurrency=200))
        assert res.max_in_flight <= 200
        assert sum(res.acked.values()) == total == 10_000 and set(res.acked) == set(names)
        counts = B.wait_counts(p.api, total, timeout=90, alive=p.alive())
        series = B.metric_series(B.http_text(f"{p.bridge}/metrics"))
        # a wrong token is refused, and a rotated file is picked up by the running bridge
        with pytest.raises(RuntimeError, match="answered 403"):  # another cluster's token
            asyncio.run(B.post_all(p.bridge, items[:1], {names[0]: tokens[names[1]]}, max_retries=0))
        rot = asyncio.run(B.rotation_seconds(p.bridge, tokens_path, names, tokens))
        assert rot < 30
    assert counts == res.acked  # per cluster, exact: nothing lost, nothing doubled
    assert B.check_budget(series, budget, res.acked, res.batches) == []
    assert len(series["kaudit_bridge_events_total"]) == budget + 1
    landed = B.raw_partitions_of(s, sum(res.batches.values()))
    assert landed == {c: {B.librdkafka_partition(c.encode(), s.raw_partitions)} for c in names}
