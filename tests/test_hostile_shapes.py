"""Hostile shapes of every field (wrong types, huge numbers, control characters, SQL and HTML text) through the
bridge's validation, the worker's two paths and the sink's insert into real chDB: nothing raises, each item is
either stored or dead-lettered with a reason, and both worker paths agree. A seeded fuzz of the samples plus the
cases it found: a ``stage`` that is a list made the bridge raise (a 500: the API server retries, then drops the
batch), a status code past 64 bits failed the worker's Avro writer for the whole raw record."""

from __future__ import annotations

import json
import random
from pathlib import Path

import orjson
import pytest

from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleSet, load_rules
from pipeline.agents.state import PartitionState
from pipeline.config import Settings
from pipeline.ingest.bridge.server import HTTPProblem, classify
from pipeline.models.avro import codec
from pipeline.models.readers import RawEvent, read_events
from pipeline.sinks import avro_ocf
from pipeline.sinks.tables import EventsWriter, Item, StatsWriter
from tests.conftest import SAMPLES

WEIRD = [None, True, 0, -1, 2**63, -(2**63) - 1, 10**30, 1.5, 1e308, "", "x" * 3000, "\u0000", "\u202e", [], {},
         [1, "a", None], {"a": {"b": []}}, "2026-13-45T99:99:99Z", "9" * 30, "<script>", "'; DROP TABLE audit_events; --"]  # fmt: skip


def _samples() -> list[dict]:
    out = []
    for f in sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md"):
        out += [it.event for it in read_events(f.read_bytes()) if isinstance(it, RawEvent)]
    return out


def _mutate(ev: dict, rnd: random.Random) -> dict:
    ev = orjson.loads(orjson.dumps(ev))

    def walk(o):
        if isinstance(o, dict):
            for k in list(o):
                r = rnd.random()
                if r < 0.08:
                    o[k] = rnd.choice(WEIRD)
                elif r < 0.1:
                    del o[k]
                else:
                    walk(o[k])
        elif isinstance(o, list):
            for i in range(len(o)):
                o[i] = rnd.choice(WEIRD) if rnd.random() < 0.08 else o[i]
                walk(o[i])

    walk(ev)
    return ev


def _store(writers, out, offset: int) -> int:
    ev, verb, status = writers
    if not out.events_value:
        return 0
    h = avro_ocf.read_batch_header(out.events_value)
    span = (h.events_start, h.events_end) if h.events_start >= 0 else None
    n = ev.write([Item("events", 0, offset, out.events_value, out.source_id, h.n_events, codec("event_batch").fp, span=span)])[0]
    for w, value, stem in ((verb, out.verb_value, "verb_stats"), (status, out.status_value, "status_stats")):
        if value:
            sid, rows = avro_ocf.read_rows_header(value)
            w.write([Item(stem, 0, offset, value, sid, rows, codec(stem).fp)])
    return n


@pytest.fixture()
def writers(warehouse, tmp_path: Path):
    client, _s, _db = warehouse
    return client, (EventsWriter(client, True, tmp_path), StatsWriter(client, "verb_stats", "verb", True, tmp_path),
                    StatsWriter(client, "status_stats", "code", True, tmp_path))  # fmt: skip


def test_hostile_field_types_are_stored_or_dead_lettered(writers):
    client, w = writers
    rnd = random.Random(20261204)
    samples = _samples()
    s = Settings()
    native, python = Processor(s, RuleSet(load_rules())), Processor(s.model_copy(update={"native": False}), RuleSet(load_rules()))
    st_n, st_p = PartitionState(0, 900), PartitionState(1, 900)
    stored = expected = 0
    for offset in range(60):
        items = [_mutate(rnd.choice(samples), rnd) for _ in range(20)]
        for i, it in enumerate(items):
            it["auditID"] = f"h{offset}-{i}" if rnd.random() < 0.8 else it.get("auditID")
        body = json.dumps({"kind": "EventList", "items": items}).encode()  # orjson cannot write past 64 bits
        try:
            fmt, good, bad = classify(body)
        except HTTPProblem as exc:  # a 4xx with a reason is an answer too, never a raise of anything else
            assert 400 <= exc.status < 500
            continue
        hdrs = [("kaudit-skip-items", ",".join(str(i) for i, _, _ in bad).encode())] if bad else []
        outs = [p.process(st, offset, b"c", body, hdrs) for p, st in ((native, st_n), (python, st_p))]
        for out in outs:
            assert not [d for d in out.deadletters if b"worker error" in d[0]], offset  # no record lost whole
            assert out.n_events == good  # the bridge's verdict and the worker's agree
        assert [(o.n_kept, o.n_bad) for o in outs[1:]] == [(outs[0].n_kept, outs[0].n_bad)]
        expected += outs[0].n_kept
        stored += _store(w, outs[0], offset)
    assert stored == expected > 500
    assert client.query("SELECT count() FROM audit_events").result_rows[0][0] == stored


@pytest.mark.parametrize("stage", [["ResponseComplete"], {"a": 1}, 7, None])
def test_a_stage_of_any_type_is_a_reason_not_a_raise(stage):
    ok = {"auditID": "a", "stage": "ResponseComplete", "requestReceivedTimestamp": "2026-01-01T00:00:00Z"}
    body = orjson.dumps({"kind": "EventList", "items": [ok, {**ok, "auditID": "b", "stage": stage}]})
    fmt, good, bad = classify(body)
    assert (fmt, good, [i for i, _, _ in bad]) == ("eventlist", 1, [1]) and "stage" in bad[0][1]


@pytest.mark.parametrize("code", [2**63, -(2**63) - 1, 2**31, 10**30, 1e308, "nope"])
def test_a_status_code_past_int32_is_stored_as_zero(writers, code):
    client, w = writers
    ev = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "c", "stage": "ResponseComplete",
          "requestURI": "/api/v1/pods", "verb": "list", "user": {"username": "bob"}, "responseStatus": {"code": code},
          "requestReceivedTimestamp": "2026-01-01T00:00:00.000001Z", "stageTimestamp": "2026-01-01T00:00:00.000002Z"}  # fmt: skip
    body = json.dumps({"kind": "EventList", "items": [ev]}).encode()
    for native in (True, False):
        out = Processor(Settings(native=native), RuleSet([])).process(PartitionState(0, 900), 0, b"c", body, [])
        assert (out.n_kept, out.deadletters) == (1, [])
    assert _store(w, out, 0) == 1
    assert client.query("SELECT responsestatus_code FROM audit_events").result_rows == [(0,)]
