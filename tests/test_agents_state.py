"""Dedup state, windows, noise filter and the processor's determinism, without Kafka."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.agents.filters import FilterError, load_filter
from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleSet, example_event, load_rules
from pipeline.agents.state import PartitionState, SeenIndex
from pipeline.agents.windows import window_start_us
from pipeline.config import Settings
from pipeline.models import native
from pipeline.models.avro import codec

RULES = RuleSet(load_rules())


def body(events: list[dict]) -> bytes:
    return orjson.dumps({"kind": "EventList", "items": events})


def ev(n: int, **over) -> dict:
    return example_event({"verb": "delete", **over}, n)


SEEN_KINDS = [SeenIndex] + ([native.SeenKeys] if native.available() else [])


@pytest.mark.parametrize("kind", SEEN_KINDS, ids=lambda k: k.__name__)
def test_seen_index_replay_counts_at_first_offset_and_expires(kind):
    idx = kind(10)
    assert idx.first_at("k", 5, now=100.0)
    assert idx.first_at("k", 5, now=101.0)  # the same record replayed: still first
    assert not idx.first_at("k", 6, now=101.0)  # a later record: duplicate
    assert idx.first_at("k", 3, now=101.0)  # an earlier record replayed after a rebuild: first
    assert not idx.first_at("k", 5, now=101.0)
    idx.expire(now=105.0)
    assert len(idx) == 1
    idx.expire(now=111.0)
    assert len(idx) == 0 and idx.first_at("k", 9, now=112.0)
    idx.add(("c", "a", "s"), 7, 120.0)  # rebuilt from the events topic
    assert not idx.first_at(("c", "a", "s"), 8, now=121.0) and idx.first_at(("c", "a", "s"), 7, now=121.0)
    idx.add(("c", "a", "s"), 4, 121.0)  # an earlier sighting lowers the first offset
    assert not idx.first_at(("c", "a", "s"), 5, now=122.0)
    assert idx.first_at(("c", "a", "t"), 8, now=122.0)  # another stage is another key


def test_partition_state_keeps_compact_keys_when_native_is_built():
    st = PartitionState(0, 900)
    assert type(st.seen).__name__ == ("SeenKeys" if native.available() else "SeenIndex")
    assert type(PartitionState(0, 900, compact=False).seen) is SeenIndex


def test_windows_are_event_time_tumbling():
    assert window_start_us(1_500_000_059_999_999, 60) == 1_500_000_000_000_000
    assert window_start_us(1_500_000_060_000_000, 60) == 1_500_000_060_000_000


def test_processor_dedups_within_and_across_records_and_replays_identically():
    proc = Processor(Settings(), RULES)
    st = PartitionState(1, 900)
    r0 = body([ev(1), ev(2), ev(1)])
    o0 = proc.process(st, 0, b"c", r0, [])
    assert (o0.n_kept, o0.n_dup) == (2, 1)
    o1 = proc.process(st, 1, b"c", body([ev(2), ev(3)]), [])
    assert (o1.n_kept, o1.n_dup) == (1, 1)
    # replay of offset 0 and 1 on the same state (crash after outputs, before commit): identical outputs
    again0 = proc.process(st, 0, b"c", r0, [])
    again1 = proc.process(st, 1, b"c", body([ev(2), ev(3)]), [])
    assert (again0.events_value, again0.verb_value, again0.status_value) == (o0.events_value, o0.verb_value, o0.status_value)
    assert [a.alert_id for a in again0.alerts] == [a.alert_id for a in o0.alerts]
    assert again1.events_value == o1.events_value
    rows = codec("verb_stats").decode(o0.verb_value)
    assert rows["source_id"] == "1:0" and rows["rows"][0]["verb"] == "delete" and rows["rows"][0]["count"] == 2
    # the same auditID in another cluster is another event
    assert proc.process(st, 2, b"other", r0, []).n_kept == 2


def test_count_stages_and_skip_items():
    s = Settings(count_stages="ResponseComplete")
    proc = Processor(s, RULES)
    st = PartitionState(0, 900)
    events = [ev(1, stage="RequestReceived"), ev(1), ev(2)]
    out = proc.process(st, 0, b"c", body(events), [("kaudit-skip-items", b"2")])
    assert out.n_kept == 2  # both stages stored, item 2 skipped (the bridge dead-lettered it)
    assert sum(r["count"] for r in codec("verb_stats").decode(out.verb_value)["rows"]) == 1


def test_poison_and_bad_items_go_to_dead_letter():
    proc = Processor(Settings(), RULES)
    st = PartitionState(0, 900)
    out = proc.process(st, 4, b"c", b"\x00garbage", [])
    assert out.n_bad == 1 and out.events_value is None
    dl = orjson.loads(out.deadletters[0][0])
    assert dl["stage"] == "worker" and dl["origin"].endswith(":0:4") and "garbage" not in dl["data"]
    assert dl["withheld"] == 1 and "withheld by kaudit: not JSON, 8 bytes" in dl["data"]  # may hold a credential
    out = proc.process(st, 5, b"c", body([ev(1), {"verb": "get"}, 7]), [])
    assert out.n_kept == 1 and out.n_bad == 2
    assert proc.process(st, 6, b"c", b"", []).n_bad == 1


def test_threshold_rule_fires_once_per_group_and_window():
    proc = Processor(Settings(), RULES)
    st = PartitionState(0, 900)
    denied = [example_event({"verb": "get", "responseStatus": {"code": 403}}, n) for n in range(25)]
    out = proc.process(st, 0, b"c", body(denied[:5]), [])
    assert not [a for a in out.alerts if a.record["rule_id"] == "forbidden-burst"]
    out = proc.process(st, 1, b"c", body(denied[5:]), [])
    fb = [a for a in out.alerts if a.record["rule_id"] == "forbidden-burst"]
    assert len(fb) == 1 and fb[0].record["count"] == 10 and fb[0].record["group_key"] == "alice"


def test_noise_filter(tmp_path: Path):
    f = tmp_path / "f.yaml"
    f.write_text(
        "filters:\n"
        "  - {name: reads, match: {verb: get}, action: drop}\n"
        "  - {name: half-lists, match: {verb: list}, action: sample, keep: 0.5}\n"
    )
    proc = Processor(Settings(), RULES, load_filter(f))
    st = PartitionState(0, 900)
    events = [example_event({"verb": v}, n) for n, v in enumerate(["get"] * 10 + ["list"] * 200 + ["create"] * 5)]
    out = proc.process(st, 0, b"c", body(events), [])
    assert 10 + 60 < out.n_dropped < 10 + 140 and out.n_kept == len(events) - out.n_dropped
    rows = codec("verb_stats").decode(out.verb_value)["rows"]
    assert sum(r["count"] for r in rows) == len(events) and sum(r["dropped"] for r in rows) == out.n_dropped
    f.write_text("filters: [{name: x, match: {verb: get}, action: sample}]\n")
    with pytest.raises(FilterError, match="filter 'x': field 'keep'"):
        load_filter(f)
