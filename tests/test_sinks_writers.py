"""Table writers against the real chDB engine (no Kafka): new sources, duplicates, partly stored sources,
aggregates equal GROUP BY over the events, alerts by alert_id, and bad bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import config
from pipeline.models import native
from pipeline.models.avro import codec, encode_event_batch
from pipeline.sinks import avro_ocf, tables
from pipeline.sinks.fixtures import chunks, sample_sources, stats_records
from pipeline.sinks.tables import AlertsWriter, EventsWriter, Item, StatsWriter
from tests.conftest import SAMPLES


def _sources(size: int = 50) -> list[tuple[str, str, list[dict]]]:
    out, n = [], 0
    for cluster, events in sample_sources(SAMPLES):
        for ch in chunks(events, size):
            out.append((f"{n % 4}:{n}", cluster, ch))
            n += 1
    return out


def _event_items(sources, sized: bool = False) -> list[Item]:
    """EventBatch items as fastavro writes them (the events array's count alone), or ``sized`` as the worker does
    (encode_event_batch: one block with its byte size, each event ending with its source_id): the sink inserts
    those as a run of AuditEvent records."""
    eb, ae = codec("event_batch"), codec("audit_event")
    items = []
    for sid, cluster, events in sources:
        if sized:
            joined = b"".join(ae.encode({**ev, "source_id": sid}) for ev in events)
            value = encode_event_batch(sid, cluster, 0, joined, len(events), [])
        else:
            value = eb.encode({"source_id": sid, "cluster": cluster, "received_at": 0, "events": events})
        h = avro_ocf.read_batch_header(value)
        assert h.source_id == sid and h.n_events == len(events)
        span = (h.events_start, h.events_end) if h.events_start >= 0 else None
        assert (span is not None) is sized
        items.append(Item("events", 0, 0, value, sid, h.n_events, eb.fp, span=span))
    return items


def _stats_items(sources, stem: str) -> list[Item]:
    c = codec(stem)
    items = []
    for sid, _cluster, events in sources:
        rec = stats_records(sid, events)[0 if stem == "verb_stats" else 1]
        value = c.encode(rec)
        assert avro_ocf.read_rows_header(value) == (sid, len(rec["rows"]))
        items.append(Item(stem, 0, 0, value, sid, len(rec["rows"]), c.fp))
    return items


def _count(client, sql: str):
    return client.query(sql).result_rows[0][0]


@pytest.fixture()
def writers(warehouse, tmp_path: Path):
    client, _s, _db = warehouse
    return client, EventsWriter(client, True, tmp_path), StatsWriter(client, "verb_stats", "verb", True, tmp_path), \
        StatsWriter(client, "status_stats", "code", True, tmp_path)  # fmt: skip


def test_events_land_once_even_when_written_again(writers):
    client, ev, _, _ = writers
    sources = _sources()
    items = _event_items(sources)
    assert ev.write(items) == (1001, 0)
    assert _count(client, "SELECT count() FROM audit_events") == 1001
    # the same batch again (in-memory LRU), then with a fresh writer (ClickHouse check only)
    assert ev.write(items)[0] == 0
    fresh = EventsWriter(client, True, ev.tmp_dir)
    assert fresh.write(_event_items(sources)) == (0, len(sources))
    assert _count(client, "SELECT count() FROM audit_events") == 1001
    assert _count(client, "SELECT sum(events) FROM events_1m") == 1001
    # every field made it through ClickHouse's own Avro decoding
    row = client.query("SELECT username, impersonated_username, usergroups, responsestatus_code, "
                       "toUnixTimestamp64Micro(request_received_ts) FROM audit_events "
                       "WHERE auditid = '033d17af-082d-4b24-aa22-627752e83d71' AND stage = 'ResponseComplete'").result_rows  # fmt: skip
    assert ("system:admin", "bob", ["system:masters", "system:authenticated"], 403, 1505159705_000000) in row


def test_duplicates_inside_one_batch_count_once(writers):
    client, ev, _, _ = writers
    items = _event_items(_sources()[:5])
    assert ev.write(items + items)[0] == sum(it.n_rows for it in items)
    assert _count(client, "SELECT count() FROM audit_events") == sum(it.n_rows for it in items)


def test_partly_stored_source_gets_only_its_missing_rows(writers):
    client, ev, _, _ = writers
    sources = _sources(100)
    sid, cluster, events = sources[3]
    # a crash left 37 of this source's rows (say one part of a multi-part insert)
    first = _event_items([(sid, cluster, events[:37])])
    ev.write(first)
    fresh = EventsWriter(client, True, ev.tmp_dir)  # restart: no memory of it
    inserted, _ = fresh.write(_event_items(sources))
    assert inserted == 1001 - 37
    assert _count(client, "SELECT count() FROM audit_events") == 1001
    dup = _count(client, "SELECT count() FROM (SELECT source_id, cluster, auditid, stage, count() c FROM audit_events "
                         "GROUP BY ALL HAVING c > 1)")  # fmt: skip
    assert dup == 0


def test_dedup_token_drops_a_retried_identical_insert(writers):
    client, ev, _, _ = writers
    items = _event_items(_sources()[:3])
    data = avro_ocf.container([it.value for it in items], items[0].fp)
    ev.insert_container(data, "tok-test")
    ev.insert_container(data, "tok-test")  # e.g. a retry after a lost acknowledgement
    assert _count(client, "SELECT count() FROM audit_events") == sum(it.n_rows for it in items)


def test_parallel_read_is_one_part_and_its_retry_is_dropped_whole(writers):
    """The container split into files that two threads decode still lands as ONE block with ONE token, so a retry
    of it (the split is a deterministic function of the sources) is dropped whole, in whatever order the threads
    read the files; and the writer's plan skips stored sources whatever the split."""
    client, ev, _, _ = writers
    assert ev.read_threads == 2
    items = _event_items(_sources(20))
    parts = tables.split_rows(items, 2)
    assert len(parts) == 2 and [it for part in parts for it in part] == items
    assert abs(sum(it.n_rows for it in parts[0]) - sum(it.n_rows for it in parts[1])) < 2 * 20
    files = [avro_ocf.container([it.value for it in part], items[0].fp) for part in parts]
    want = sum(it.n_rows for it in items)
    ev.insert_container(files, "tok-par")
    assert _count(client, "SELECT count() FROM audit_events") == want
    months = _count(client, "SELECT uniqExact(toYYYYMM(request_received_ts)) FROM audit_events")
    assert _count(client, "SELECT count() FROM system.parts WHERE active AND table = 'audit_events' "
                          "AND database = currentDatabase()") == months  # one block: one part per partition  # fmt: skip
    ev.insert_container(files, "tok-par")  # a retry of the same insert
    ev.insert_container(files[::-1], "tok-par")  # ... whichever file a thread happens to read first
    assert _count(client, "SELECT count() FROM audit_events") == want
    assert _count(client, "SELECT sum(events) FROM events_1m") == want
    # the writer's own path: new sources go in split, a replay of them is skipped by the plan
    more = _event_items([(f"{n % 4}:{1000 + n}", c, evs) for n, (_sid, c, evs) in enumerate(_sources(30))])
    assert ev.write(more) == (want, 0)
    assert EventsWriter(client, True, ev.tmp_dir).write(more) == (0, len(more))
    assert _count(client, "SELECT count() FROM audit_events") == 2 * want
    assert _count(client, "SELECT count() FROM (SELECT source_id, auditid, stage, count() c FROM audit_events "
                          "GROUP BY ALL HAVING c > 1)") == 0  # fmt: skip
    assert not list(ev.tmp_dir.glob("*.avro"))  # temporary files removed


def test_split_rows_is_deterministic_and_never_empty():
    items = [Item("t", 0, i, b"", f"0:{i}", n) for i, n in enumerate([5, 400, 1, 1, 1, 300, 0, 7])]
    for n in (1, 2, 3, 8, 20):
        parts = tables.split_rows(items, n)
        assert parts == tables.split_rows(items, n)
        assert 1 <= len(parts) <= n and all(parts)
        assert [it for part in parts for it in part] == items
    assert tables.split_rows(items[:1], 4) == [items[:1]]


def test_aggregate_tables_equal_group_by_over_events(writers):
    client, ev, verb, status = writers
    sources = _sources()
    ev.write(_event_items(sources))
    vitems, sitems = _stats_items(sources, "verb_stats"), _stats_items(sources, "status_stats")
    assert verb.write(vitems) == (sum(it.n_rows for it in vitems), 0)  # Avro decoded by ClickHouse
    status.write(sitems)
    assert verb.write(vitems)[0] == 0  # replay: nothing new
    assert StatsWriter(client, "status_stats", "code", True, status.tmp_dir).write(sitems) == (0, len(sitems))
    by_verb = client.query("SELECT cluster, toStartOfMinute(request_received_ts), verb, count() FROM audit_events "
                           "GROUP BY ALL ORDER BY ALL").result_rows  # fmt: skip
    stats = client.query(
        "SELECT cluster, window_start, verb, sum(count) FROM verb_stats GROUP BY ALL ORDER BY ALL"
    ).result_rows
    assert [(c, w.replace(microsecond=0), v, n) for c, w, v, n in stats] == by_verb
    by_code = client.query(
        "SELECT responsestatus_code, count() FROM audit_events GROUP BY 1 ORDER BY 1"
    ).result_rows
    assert (
        client.query("SELECT code, sum(count) FROM status_stats GROUP BY 1 ORDER BY 1").result_rows == by_code
    )
    assert sum(n for _, n in by_code) == 1001


def _alert_item(alert_id: str, source_id: str, offset: int = 0) -> Item:
    c = codec("alert")
    alert = {f["name"]: f.get("default") for f in c.schema["fields"]}
    alert.update(alert_id=alert_id, rule_id="r1", title="t", severity="high", cluster="c1", ts=1_700_000_000_000_000,
                 source_id=source_id, window_start=0, count=1, usergroups=["g1", "g2"])  # fmt: skip
    return Item("alerts", 0, offset, c.encode(alert), source_id, 1, c.fp, key=alert_id)


def test_alerts_are_stored_once_per_alert_id(warehouse, tmp_path):
    """ClickHouse decodes the Alert records; one source can raise several alerts, and a replayed source (at or
    below the watermark, in a new writer) finds its alerts stored by alert_id."""
    client, _s, _db = warehouse
    a = AlertsWriter(client, True, tmp_path)
    a1, a2, a3 = _alert_item("a1", "0:1"), _alert_item("a2", "0:1", 1), _alert_item("a3", "0:2", 2)
    assert a.write([a1, a1, a2]) == (2, 1)
    assert a.write([a3]) == (1, 0)
    fresh = AlertsWriter(client, True, tmp_path)  # after a restart: the watermark comes from the table
    a4 = _alert_item("a4", "0:2", 3)  # a source's later alert in a later batch: at the watermark, not stored
    assert fresh.write([a1, a2, a3, a4]) == (1, 3)
    rows = client.query("SELECT alert_id, source_id, usergroups, toUnixTimestamp64Micro(ts) FROM alerts "
                        "ORDER BY alert_id").result_rows  # fmt: skip
    assert rows == [(f"a{i}", sid, ["g1", "g2"], 1_700_000_000_000_000)
                    for i, sid in enumerate(["0:1", "0:1", "0:2", "0:2"], 1)]  # fmt: skip


def test_header_reader_rejects_garbage():
    with pytest.raises(avro_ocf.HeaderError):
        avro_ocf.read_batch_header(b"\xff\xff\xff")
    with pytest.raises(avro_ocf.HeaderError):
        avro_ocf.read_batch_header(b"")


def test_rollup_reconcile_restores_what_a_killed_insert_left_out(writers):
    from pipeline.sinks.runner import reconcile_rollup

    client, ev, _, _ = writers
    ev.write(_event_items(_sources()))
    client.command("TRUNCATE TABLE events_1m")  # as if the MV part of every insert had been lost
    assert reconcile_rollup(client) == 1001
    assert reconcile_rollup(client) == 0  # idempotent
    by_min = client.query("SELECT cluster, toDateTime(toStartOfMinute(request_received_ts), 'UTC') m, count() "
                          "FROM audit_events GROUP BY ALL ORDER BY ALL").result_rows  # fmt: skip
    assert (
        client.query(
            "SELECT cluster, minute, sum(events) FROM events_1m GROUP BY ALL ORDER BY ALL"
        ).result_rows
        == by_min
    )


def _event(auditid: str, ts: str = "2026-01-01T00:00:00.000001Z", **extra) -> dict:
    return {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": auditid,
            "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list", "user": {"username": "bob"},
            "requestReceivedTimestamp": ts, "stageTimestamp": ts, **extra}  # fmt: skip


def _worker_outputs(offset: int, events: list[dict]) -> tuple[Any, Item]:
    """What the worker makes of one raw record holding ``events``: its outputs, and its events record as the
    sink's Item."""
    from pipeline.agents.processor import Processor
    from pipeline.agents.rules import RuleSet
    from pipeline.agents.state import PartitionState
    from pipeline.config import get_settings

    body = orjson.dumps({"kind": "EventList", "items": events})
    out = Processor(get_settings(), RuleSet([])).process(PartitionState(0, 900), offset, b"c", body, [])
    h = avro_ocf.read_batch_header(out.events_value)
    return out, Item("events", 0, offset, out.events_value, out.source_id, h.n_events, codec("event_batch").fp,
                     span=(h.events_start, h.events_end) if h.events_start >= 0 else None)  # fmt: skip


def test_a_batch_spanning_hundreds_of_months_is_stored(writers):
    """The tables are partitioned by month and ClickHouse refuses an insert that touches more than 100 partitions
    (Code 252): a cluster whose clock jumped, a backfill, or one client posting a timestamp per month would have
    failed every retry of the batch and stopped the sink for everyone. Worker outputs, as the sink writes them."""
    from pipeline.sinks.runner import reconcile_rollup
    from pipeline.volume.rollup import reconcile_volume

    client, ev, verb, status = writers
    stamps = [f"{1990 + i // 12}-{i % 12 + 1:02d}-01T00:00:00.000001Z" for i in range(150)]
    stamps += ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"]
    out, eitem = _worker_outputs(7, [_event(f"m-{i}", ts) for i, ts in enumerate(stamps)])
    assert out.n_kept == len(stamps)
    assert ev.write([eitem]) == (len(stamps), 0)
    for w, value, stem in ((verb, out.verb_value, "verb_stats"), (status, out.status_value, "status_stats")):
        sid, n = avro_ocf.read_rows_header(value)
        assert n == len(stamps) and w.write([Item(stem, 0, 7, value, sid, n, codec(stem).fp)]) == (n, 0)
    months = "SELECT uniq(toYYYYMM(request_received_ts)), count() FROM audit_events"
    assert client.query(months).result_rows == [(len(stamps), len(stamps))]
    assert _count(client, "SELECT sum(count) FROM verb_stats") == len(stamps)
    client.command("TRUNCATE TABLE events_1m")  # the repairs after a killed sink insert the same spread
    client.command("TRUNCATE TABLE volume_1h")
    assert reconcile_rollup(client) == len(stamps) and reconcile_volume(client) == len(stamps)


def _latency_events(prefix: str, texts: list[str]) -> list[dict]:
    return [_event(f"{prefix}-{i}", annotations={"apiserver.latency.k8s.io/total": t}) for i, t in enumerate(texts)]


def test_no_latency_annotation_fails_an_insert(writers):
    """latency_us is computed by ClickHouse from apiserver.latency.k8s.io/total on insert: a duration of 400 digits
    parsed as +inf, toUInt64 refused it (Code 70), and since the Avro itself decodes, the sink retried that batch
    forever. Any text now gives a number and the batch lands."""
    client, ev, _, _ = writers
    texts = ["9" * 400 + "h", "1e999s", "nan", "inf", "-5s", "1.2.3ms", "12.5ms", "", "µs", "2m3.5s"]
    assert ev.write([_worker_outputs(9, _latency_events("l", texts))[1]]) == (len(texts), 0)
    got = dict(client.query("SELECT auditid, latency_us FROM audit_events WHERE auditid LIKE 'l-%'").result_rows)
    assert got["l-6"] == 12_500 and got["l-9"] == 123_500_000 and got["l-7"] == 0  # real durations as before
    assert got["l-0"] > 10**18  # capped, not an error


@pytest.mark.kafka
def test_a_record_clickhouse_refuses_is_dead_lettered_and_the_batch_stored(settings, warehouse, tmp_path):
    """Every record decodes, yet ClickHouse refuses the insert for one value (here: a table whose latency_us is
    computed by the expression before migration 10, and a 400-digit duration). The sink used to retry such a
    batch forever; now it writes the batch in halves until the refused record is alone, dead-letters it, and
    stores the rest."""
    from pipeline.ingest.testing import read_topic
    from pipeline.sinks.runner import Batch, Sink
    from pipeline.warehouse.migrations import LATENCY_COLUMN

    client, _, _ = warehouse
    old = LATENCY_COLUMN.replace("least(toFloat64OrZero(extract(p, '^[0-9.]+')), 1e12)", "toFloat64OrZero(extract(p, '^[0-9.]+'))")
    client.command(f"ALTER TABLE audit_events MODIFY COLUMN {old}")
    sink = Sink(settings)
    sink.client, sink.embedded = client, True
    sink.writers = {"events": EventsWriter(client, True, tmp_path), "verb": StatsWriter(client, "verb_stats", "verb", True, tmp_path),
                    "status": StatsWriter(client, "status_stats", "code", True, tmp_path), "alerts": AlertsWriter(client, True, tmp_path)}  # fmt: skip
    batch = Batch()
    batch.items["events"] = [_worker_outputs(o, _latency_events(f"o{o}", ["9" * 400 + "h" if o == 5 else "12ms"] * 3))[1]
                             for o in range(8)]
    assert sink._write_until_done(batch)
    stored = dict(client.query("SELECT source_id, count() FROM audit_events GROUP BY 1").result_rows)
    assert stored == {f"0:{o}": 3 for o in range(8) if o != 5}
    dead = [orjson.loads(r.value) for r in read_topic(settings.kafka_bootstrap, settings.topic(config.DEADLETTER))]
    assert [(d["origin"], d["reason"][:40]) for d in dead] == [("events:0:5", "ClickHouse refused it: Code: 70. DB::Exc")]


def test_partly_stored_stats_source_gets_only_its_missing_rows(writers):
    client, _, verb, _ = writers
    sources = _sources(100)
    sid, _cluster, events = max(sources, key=lambda src: len(stats_records(src[0], src[2])[0]["rows"]))
    rec = stats_records(sid, events)[0]
    assert len(rec["rows"]) > 2
    cut = {**rec, "rows": rec["rows"][:2]}  # a crash left two of its rows
    c = codec("verb_stats")
    verb.write([Item("v", 0, 0, c.encode(cut), sid, 2, c.fp)])
    items = _stats_items(sources, "verb_stats")
    fresh = StatsWriter(client, "verb_stats", "verb", True, verb.tmp_dir)
    assert fresh.write(items)[0] == sum(it.n_rows for it in items) - 2
    assert _count(client, "SELECT sum(count) FROM verb_stats") == 1001
    assert _count(client, "SELECT count() FROM (SELECT source_id, window_start, verb, count() c FROM verb_stats "
                          "GROUP BY ALL HAVING c > 1)") == 0  # fmt: skip


@pytest.mark.parametrize("sized", [False, True], ids=["eventbatch", "records"])
def test_undecodable_records_go_to_deadletter_and_the_rest_lands_once(warehouse, tmp_path, sized):
    """ClickHouse decodes the Avro: a record whose header reads fine but whose body is garbage fails the insert;
    the sink finds it in Python, dead-letters it, and writes the rest of the batch (events and stats) once.
    ``records``: the worker's sized arrays, inserted as runs of AuditEvent records, garbage inside the run."""
    import threading

    from pipeline.sinks.runner import Batch, Sink

    client, s, _db = warehouse
    sink = Sink(s.model_copy(update={"var": tmp_path}))
    sink.writers = {"events": EventsWriter(client, True, tmp_path),
                    "verb": StatsWriter(client, "verb_stats", "verb", True, tmp_path),
                    "status": StatsWriter(client, "status_stats", "code", True, tmp_path),
                    "alerts": AlertsWriter(client, True, tmp_path)}  # fmt: skip
    sink._producer = object()  # noqa: SLF001 - produce_sync is replaced below
    sources = _sources()
    batch = Batch()
    batch.items["events"] = _event_items(sources, sized)
    batch.items["verb"] = _stats_items(sources, "verb_stats")
    bad_ev, bad_st = batch.items["events"][3], batch.items["verb"][5]
    for it in (bad_ev, bad_st):  # keep the header (source_id, counts), break the rows
        if it.span is not None:  # inside the run of records only: the header still says where it lies
            a, b = it.span
            cut = a + (b - a) // 3
            it.value = it.value[:cut] + b"\xff" * (b - cut) + it.value[b:]
            assert avro_ocf.read_batch_header(it.value).events_end == b
            continue
        head = len(it.value) // 3
        it.value = it.value[:head] + b"\xff" * (len(it.value) - head - 1) + b"\x00"
    want_stats = sum(it.n_rows for it in batch.items["verb"]) - bad_st.n_rows
    good_alert, bad_alert = _alert_item("a1", "0:1"), _alert_item("a2", "0:1", 1)
    bad_alert.value = bad_alert.value[:10] + b"\xff" * 20  # alert_id readable, the rest not
    batch.items["alerts"] = [good_alert, bad_alert]
    sent = []
    timer = threading.Timer(60, sink.stop.set)  # a regression must fail, not retry forever
    timer.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(
                "pipeline.sinks.runner.produce_sync",
                lambda _p, _topic, value, headers=None: sent.append(value),
            )
            assert sink._write_until_done(batch)  # noqa: SLF001
    finally:
        timer.cancel()
    assert len(sent) == 3
    assert client.query("SELECT alert_id FROM alerts").result_rows == [("a1",)]
    assert _count(client, "SELECT count() FROM audit_events") == 1001 - bad_ev.n_rows
    assert _count(client, f"SELECT count() FROM audit_events WHERE source_id = '{bad_ev.source_id}'") == 0
    assert _count(client, "SELECT count() FROM verb_stats") == want_stats
    assert _count(client, f"SELECT count() FROM verb_stats WHERE source_id = '{bad_st.source_id}'") == 0


def _watch_ways(ev, monkeypatch) -> list[str]:
    """The way each insert of ``ev`` went: "" (EventBatch, ARRAY JOIN), "records" (AuditEvent runs as Avro),
    "rowbinary" (the same runs transcoded by native.avro_rowbinary)."""
    ways: list[str] = []
    real = ev.insert_files

    def insert_files(*a, **k):
        ways.append(("rowbinary" if k.get("structure") else "records") if k.get("head") else "")
        return real(*a, **k)

    monkeypatch.setattr(ev, "insert_files", insert_files)
    return ways


DIRECT_WAYS = ["records", "rowbinary"] if native.available() else ["records"]


@pytest.mark.parametrize("way", DIRECT_WAYS)
def test_worker_records_go_in_as_event_records_with_their_source_ids(writers, monkeypatch, way):
    """The worker's sized arrays are inserted as runs of AuditEvent records (no ARRAY JOIN), as Avro or transcoded
    to RowBinary: every row has its own source's id and the same columns as the EventBatch way; in one batch with
    fastavro-written records both land, a second write of all of them is skipped whole."""
    client, ev, _, _ = writers
    ev.rowbinary = way == "rowbinary"
    sources = _sources(37)
    half = len(sources) // 2
    items = _event_items(sources[:half], sized=True) + _event_items(sources[half:])
    ways = _watch_ways(ev, monkeypatch)
    assert ev.write(items) == (1001, 0)
    assert sorted(ways) == ["", way]  # one insert each way
    want = {}
    for sid, _cluster, events in sources:
        for e in events:
            want.setdefault(sid, []).append((e["auditid"], e["stage"], e["cluster"], e["request_uri"], e["event_bytes"],
                                             e["request_object"], tuple(e["usergroups"])))  # fmt: skip
    got = {}
    for row in client.query("SELECT source_id, auditid, stage, cluster, request_uri, event_bytes, request_object, "
                            "usergroups FROM audit_events ORDER BY source_id, auditid, stage").result_rows:  # fmt: skip
        got.setdefault(row[0], []).append((*row[1:6], row[6] or "", tuple(row[7])))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
    fresh = EventsWriter(client, True, ev.tmp_dir)  # a restarted sink: nothing remembered, the table checked
    assert fresh.write(_event_items(sources[:half], sized=True) + _event_items(sources[half:])) == (0, len(sources))
    assert _count(client, "SELECT count() FROM audit_events") == 1001


@pytest.mark.parametrize("way", DIRECT_WAYS)
def test_event_records_read_by_two_threads_are_one_part(writers, monkeypatch, way):
    """The direct way split into two files (a writer catching up): still one block, one part per partition, every
    row with its own source_id, and a replay skipped by the plan."""
    client, ev, _, _ = writers
    ev.rowbinary = way == "rowbinary"
    monkeypatch.setattr(tables, "PARALLEL_READ_ROWS", 1)
    sources = _sources(20)
    items = _event_items(sources, sized=True)
    assert ev.write(items) == (1001, 0)
    months = _count(client, "SELECT uniqExact(toYYYYMM(request_received_ts)) FROM audit_events")
    assert _count(client, "SELECT count() FROM system.parts WHERE active AND table = 'audit_events' "
                          "AND database = currentDatabase()") == months  # fmt: skip
    got = client.query("SELECT source_id, count() FROM audit_events GROUP BY source_id ORDER BY source_id").result_rows
    assert got == sorted((sid, len(events)) for sid, _c, events in sources)
    assert EventsWriter(client, True, ev.tmp_dir).write(_event_items(sources, sized=True)) == (0, len(sources))
    assert not list(ev.tmp_dir.glob("*.avro")) and not list(ev.tmp_dir.glob("*.bin"))


def test_sized_arrays_read_the_eventbatch_way_too(writers):
    """A server sink (and a record that cannot go as a run of records) unnests EventBatch with ARRAY JOIN: ClickHouse's
    Avro reader takes the worker's sized block (negative count, byte size) like fastavro's count-only one."""
    client, ev, _, _ = writers
    sources = _sources(37)
    items = _event_items(sources, sized=True)
    for it in items:
        it.span = None
    assert ev.write(items) == (1001, 0)
    got = client.query("SELECT source_id, count() FROM audit_events GROUP BY source_id ORDER BY source_id").result_rows
    assert got == sorted((sid, len(events)) for sid, _c, events in sources)


class _Msg:
    """The parts of a confluent_kafka.Message that Sink.route reads."""

    def __init__(self, topic: str, value: bytes, headers: list, offset: int = 0) -> None:
        self._t, self._v, self._h, self._o = topic, value, headers, offset

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._o

    def value(self) -> bytes:
        return self._v

    def headers(self) -> list:
        return self._h

    def key(self) -> bytes:
        return b"c1"


def test_sink_reads_alert_ids_without_decoding_and_falls_back_to_decoding(tmp_path):
    """The worker names an alert's raw source in a header, so the sink reads only the alert_id; an alert
    without that header is decoded in Python; one that cannot be decoded goes to the dead-letter list."""
    from pipeline import config
    from pipeline.config import Settings
    from pipeline.kafka import headers as H
    from pipeline.sinks.runner import Batch, Sink

    s = Settings(var=tmp_path)
    sink = Sink(s)
    topic, hdrs = s.topic(config.ALERTS), codec("alert").headers
    value = _alert_item("a9", "3:7").value
    batch = Batch()
    sink.route(_Msg(topic, value, [*hdrs, (H.SOURCE_ID, b"3:7")]), batch)
    sink.route(_Msg(topic, value, hdrs, 1), batch)
    sink.route(_Msg(topic, b"\x02garbage", hdrs, 2), batch)
    assert [(it.key, it.source_id, it.value) for it in batch.items["alerts"]] == [("a9", "3:7", value)] * 2
    assert len(batch.dead) == 1
    assert batch.offsets == {(topic, 0): 3}


# --- the RowBinary transcoder (native/src/rowbinary.rs): the same rows as chDB's Avro reader, or no rows ---------


def _zz(n: int) -> bytes:
    v, out = (n << 1) ^ (n >> 63), bytearray()
    v &= (1 << 64) - 1
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _avro(ev: dict, blocks: str = "count", raw: dict[str, bytes] | None = None) -> bytes:
    """The AuditEvent record ``ev`` in Avro binary, its arrays and maps as one block with its count ("count", what
    fastavro writes), as one block with a negative count and its byte size ("sized"), or one block per item
    ("split"); ``raw``: fields written as these bytes instead."""
    out = bytearray()

    def s(x: str | bytes) -> bytes:
        b = x.encode() if isinstance(x, str) else x
        return _zz(len(b)) + b

    for f in codec("audit_event").schema["fields"]:
        t, v = f["type"], ev[f["name"]]
        kind = t if isinstance(t, str) else t["type"]
        if raw and f["name"] in raw:
            out += raw[f["name"]]
        elif kind == "string":
            out += s(v)
        elif kind in ("int", "long"):
            out += _zz(v)
        elif kind == "boolean":
            out.append(1 if v else 0)
        else:
            items = [s(x) for x in v] if kind == "array" else [s(k) + s(x) for k, x in v.items()]
            if items and blocks == "sized":
                body = b"".join(items)
                out += _zz(-len(items)) + _zz(len(body)) + body
            elif items and blocks == "split":
                out += b"".join(_zz(1) + it for it in items)
            elif items:
                out += _zz(len(items)) + b"".join(items)
            out += b"\x00"
    return bytes(out)


def _edge_events() -> list[dict]:
    """AuditEvent records at the edges of every field shape: empty, one byte, 127/128/70,000-byte strings (one-,
    two- and three-byte lengths), non-ASCII text, many array items, map keys, extreme ints and timestamps."""
    base = codec("audit_event").decode(codec("audit_event").encode(
        {**_sources(1)[0][2][0], "source_id": "0:1"}), None)  # a real event, every field present  # fmt: skip
    out = []
    for i, (text, n_items) in enumerate([("", 0), ("x", 1), ("é" * 64, 3), ("y" * 127, 127), ("z" * 128, 128),
                                        ("ü" * 35_000, 2)]):  # fmt: skip
        ev = dict(base)
        ev.update(auditid=f"edge-{i}", request_uri=text, objectref_name=text[:300], usergroups=[text[:50]] * n_items,
                  sourceips=[f"10.0.0.{k % 250}" for k in range(n_items)], user_extra={f"k{k}": text[:20] for k in range(n_items % 5)},
                  annotations={} if i % 2 else {"a": "1", "apiserver.latency.k8s.io/total": "1.5ms", "é": text[:10]},
                  responsestatus_code=[0, 1, -1, 2**31 - 1, -(2**31), 403][i], event_bytes=[0, 1, 2**40, 2**63 - 1, 127, 128][i],
                  objects_truncated=bool(i % 2), request_received_ts=[0, 1, 2**50, 1_700_000_000_000_000, 128, 63][i],
                  stage_ts=1_700_000_000_123_456 + i)  # fmt: skip
        out.append(ev)
    return out


@pytest.mark.skipif(not native.available(), reason="the native module is not built")
@pytest.mark.parametrize("blocks", ["count", "sized", "split"])
def test_rowbinary_rows_equal_the_avro_rows(writers, blocks):
    """Each edge record goes in transcoded to RowBinary and, in a second table state, as Avro records: every
    column (the materialized latency_us too) reads back the same."""
    client, ev, _, _ = writers
    events = _edge_events()
    assert _avro(events[2]) == codec("audit_event").encode(events[2])  # the test's encoder is Avro
    value = b"".join(_avro(e, blocks) for e in events)
    rows = {}
    for way in ("rowbinary", "records"):
        client.command("TRUNCATE TABLE audit_events")
        w = EventsWriter(client, True, ev.tmp_dir)
        w.rowbinary = way == "rowbinary"
        ways: list[str] = []
        real = w.insert_files
        w.insert_files = lambda *a, _r=real, _w=ways, **k: (_w.append("RowBinary" if k.get("structure") else "Avro"), _r(*a, **k))[1]
        assert w.write([Item("events", 0, 0, value, "0:1", len(events), "", span=(0, len(value)))]) == (len(events), 0)
        assert ways == (["RowBinary"] if way == "rowbinary" else ["Avro"])
        rows[way] = client.query("SELECT *, latency_us FROM audit_events ORDER BY auditid").result_rows
    assert len(rows["rowbinary"]) == len(events)
    assert rows["rowbinary"] == rows["records"]
    assert [r[1] for r in rows["rowbinary"]] == sorted(e["auditid"] for e in events)


@pytest.mark.skipif(not native.available(), reason="the native module is not built")
def test_rowbinary_transcoder_writes_no_row_of_a_run_it_cannot_decode(tmp_path):
    """A run that does not decode exactly (cut short, a byte too many, a boolean of 2, a string past the end, an
    11-byte varint, an int past Int32, fewer records than declared) is reported and none of its rows is written;
    the good runs around it are, exactly as if alone."""
    codes = tables.rowbinary_types()
    assert codes is not None and len(codes) == len(codec("audit_event").schema["fields"])
    good = [_avro(e) for e in _edge_events()[:3]]
    one, ev0 = good[0], _edge_events()[0]

    def with_field(name: str, raw: bytes) -> bytes:
        return _avro(ev0, raw={name: raw})

    bad = {
        "cut short": one[:-1],
        "a byte too many": one + b"\x00",
        "boolean 2": with_field("objects_truncated", b"\x02"),
        "string past the end": with_field("source_id", _zz(1000) + b"ab"),
        "11-byte varint": with_field("event_bytes", b"\xff" * 10 + b"\x01"),
        "int past Int32": with_field("responsestatus_code", _zz(2**31)),
        "negative length": with_field("verb", _zz(-3)),
    }
    runs = [(g, 0, len(g), 1) for g in good]
    runs += [(value, 0, len(value), 1) for value in bad.values()]
    runs.append((good[1] + good[2], 0, len(good[1] + good[2]), 3))  # declares 3, holds 2
    runs.append((b"junk" + good[0], 4, 4 + len(good[0]), 1))  # a span inside a larger value: fine
    failed = native.avro_rowbinary(codes, runs, tmp_path / "all.bin")
    assert failed == list(range(3, 3 + len(bad) + 1)), failed
    expect = native.avro_rowbinary(codes, [runs[0], runs[1], runs[2], runs[-1]], tmp_path / "good.bin")
    assert expect == []
    assert (tmp_path / "all.bin").read_bytes() == (tmp_path / "good.bin").read_bytes()
    assert (tmp_path / "good.bin").stat().st_size > sum(map(len, good))  # fixed-width ints: a little larger

