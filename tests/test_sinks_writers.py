"""Table writers against the real chDB engine (no Kafka): new sources, duplicates, partly stored sources,
aggregates equal GROUP BY over the events, alerts by alert_id, and bad bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.models.avro import codec
from pipeline.sinks import avro_ocf
from pipeline.sinks.fixtures import chunks, sample_sources, stats_records
from pipeline.sinks.tables import AlertsWriter, EventsWriter, Item, StatsWriter, stats_rows
from tests.conftest import SAMPLES


def _sources(size: int = 50) -> list[tuple[str, str, list[dict]]]:
    out, n = [], 0
    for cluster, events in sample_sources(SAMPLES):
        for ch in chunks(events, size):
            out.append((f"{n % 4}:{n}", cluster, ch))
            n += 1
    return out


def _event_items(sources) -> list[Item]:
    eb = codec("event_batch")
    items = []
    for sid, cluster, events in sources:
        value = eb.encode({"source_id": sid, "cluster": cluster, "received_at": 0, "events": events})
        h = avro_ocf.read_batch_header(value)
        assert h.source_id == sid and h.n_events == len(events)
        items.append(Item("events", 0, 0, value, sid, h.n_events, eb.fp))
    return items


def _count(client, sql: str):
    return client.query(sql).result_rows[0][0]


@pytest.fixture()
def writers(warehouse, tmp_path: Path):
    client, _s, _db = warehouse
    return client, EventsWriter(client, True, tmp_path), StatsWriter(client, "verb_stats", "verb"), \
        StatsWriter(client, "status_stats", "code")  # fmt: skip


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


def test_aggregate_tables_equal_group_by_over_events(writers):
    client, ev, verb, status = writers
    sources = _sources()
    ev.write(_event_items(sources))
    vitems, sitems = [], []
    for sid, _cluster, events in sources:
        v, s = stats_records(sid, events)
        vitems.append(Item("verb", 0, 0, b"", sid, len(v["rows"]), rows=stats_rows(v)))
        sitems.append(Item("status", 0, 0, b"", sid, len(s["rows"]), rows=stats_rows(s)))
    verb.write(vitems)
    status.write(sitems)
    verb.write(vitems)  # replay: nothing new
    StatsWriter(client, "status_stats", "code").write(sitems)  # restart + replay
    by_verb = client.query("SELECT cluster, toStartOfMinute(request_received_ts), verb, count() FROM audit_events "
                           "GROUP BY ALL ORDER BY ALL").result_rows  # fmt: skip
    stats = client.query("SELECT cluster, window_start, verb, sum(count) FROM verb_stats GROUP BY ALL ORDER BY ALL").result_rows
    assert [(c, w.replace(microsecond=0), v, n) for c, w, v, n in stats] == by_verb
    by_code = client.query("SELECT responsestatus_code, count() FROM audit_events GROUP BY 1 ORDER BY 1").result_rows
    assert client.query("SELECT code, sum(count) FROM status_stats GROUP BY 1 ORDER BY 1").result_rows == by_code
    assert sum(n for _, n in by_code) == 1001


def test_alerts_are_stored_once_per_alert_id(warehouse):
    client, _s, _db = warehouse
    a = AlertsWriter(client)
    alert = {f["name"]: f.get("default") for f in codec("alert").schema["fields"]}
    alert.update(alert_id="a1", rule_id="r1", title="t", severity="high", cluster="c1", ts=1_700_000_000_000_000,
                 source_id="0:1", window_start=0, count=1)  # fmt: skip
    rec = codec("alert").decode(codec("alert").encode(alert))
    item = Item("alerts", 0, 0, b"", "0:1", 1, rows=[rec])
    assert a.write([item, item]) == (1, 1)
    assert AlertsWriter(client).write([item])[0] == 0
    assert _count(client, "SELECT count() FROM alerts") == 1


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
    assert client.query("SELECT cluster, minute, sum(events) FROM events_1m GROUP BY ALL ORDER BY ALL").result_rows == by_min
