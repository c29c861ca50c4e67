"""Credentials never leave the worker: every class of HAND-MADE event in tests/data/handmade/credentials.py,
through the Python and the native path (byte for byte the same), the events batch, alerts (Avro and JSON,
including a rule that groups by the credential fields), dead letters of every stage, and the warehouse (the
real sink writers into chDB). No credential value may appear plain, in base64 or in base64url."""

from __future__ import annotations

import copy
from pathlib import Path

import orjson
import pytest

from pipeline.agents import testing as T
from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleSet, load_rules
from pipeline.agents.state import PartitionState
from pipeline.config import Settings
from pipeline.kafka import deadletter
from pipeline.models import native
from pipeline.models.avro import codec
from pipeline.models.normalize import normalize_event
from pipeline.redaction import FIELD_IDS, hash_value, model, redact_text
from pipeline.sinks.tables import AlertsWriter, EventsWriter, Item
from tests.data.handmade.credentials import (
    CASES,
    EXPECTED,
    KEPT,
    KEPT_VALUE_OF,
    SECRETS,
    all_secret_forms,
    forms,
)

SECRET_FORMS = all_secret_forms()

# A user rule that groups by the credential fields themselves: its alerts' group_key must hold only hashes.
GREEDY_RULES = """
rules:
  - id: greedy-credential-grouping
    title: groups by credential fields (test)
    severity: low
    match:
      verb: {in: [create, patch, update, list, watch, deletecollection]}
    threshold: {count: 1, by: [request_object.data.password, request_object.stringData, response_object.status.token,
                               request_object.spec.token, response_object.items, request_object]}
    examples:
      fire:
        - {verb: create, objectRef: {resource: pods}}
      quiet:
        - {verb: get, objectRef: {resource: pods}}
"""


def leaks(blob: bytes, forms_: list[bytes] = SECRET_FORMS) -> list[bytes]:
    return [f for f in forms_ if f in blob]


def test_the_native_table_is_the_model():
    if not native.available():
        pytest.skip("kaudit_native not built")
    import kaudit_native

    assert orjson.loads(kaudit_native.redaction_table()) == model.table()
    assert len(FIELD_IDS) == len(set(FIELD_IDS)) <= 32  # a u32 mask in native code


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_class_is_redacted_and_flagged(name):
    ev = CASES[name]
    assert leaks(orjson.dumps(ev), [f for v in SECRETS[name] for f in forms(v)]), "the case holds its secrets"
    rec = normalize_event(copy.deepcopy(ev), "c")
    assert rec["redacted"] == EXPECTED[name]
    assert leaks(orjson.dumps(rec)) == []
    batch = codec("event_batch").encode({"source_id": "0:1", "cluster": "c", "received_at": 0, "events": [rec]})
    assert leaks(batch) == []
    # equal values still correlate: the same plain value hashes the same wherever it was
    assert hash_value(SECRETS[name][0]) == "sha256:" + __import__("hashlib").sha256(SECRETS[name][0].encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(CASES) + sorted(KEPT))
def test_native_path_is_byte_identical(name):
    if not native.available():
        pytest.skip("kaudit_native not built")
    from tests.test_models_native import assert_same

    ev = CASES.get(name) or KEPT[name]
    if name == "secret-unreadable-last-applied":  # text serde_json cannot read: the Python path decides
        assert native.normalize_record(T.eventlist([ev]), "c", 256 * 1024, True) is None
        return
    assert_same(T.eventlist([ev]))
    assert_same(orjson.dumps(ev) + b"\n" + orjson.dumps({**ev, "auditID": ev["auditID"] + "-2"}) + b"\n")
    (got,) = native.normalize_record(orjson.dumps(ev), "c", 256 * 1024, True)
    assert leaks(got.avro) == []


@pytest.mark.parametrize("name", sorted(KEPT))
def test_no_over_redaction(name):
    rec = normalize_event(copy.deepcopy(KEPT[name]), "c")
    assert rec["redacted"] == []
    text = orjson.dumps(rec)
    assert any(f in text for f in forms(KEPT_VALUE_OF[name]))


def test_same_value_same_hash_across_classes():
    """A Secret's password appears as data (base64), in the last-applied JSON and in a JSON patch: each place
    holds the hash of the same text, so they can be correlated."""
    rec = normalize_event(copy.deepcopy(CASES["secret-json-patch"]), "c")
    req = orjson.loads(rec["request_object"])
    resp = orjson.loads(rec["response_object"])
    assert req[0]["value"] == req[3]["value"] == resp["data"]["password"]
    assert req[7] == {"op": "add", "path": "/metadata/labels/team", "value": "payments"}  # not a credential field
    assert req[6]["value"].startswith("sha256:")  # an unreadable path: hashed whole


def test_embedded_last_applied_is_redacted_inside_and_stays_json():
    rec = normalize_event(copy.deepcopy(CASES["secret-create-by-apply"]), "c")
    obj = orjson.loads(rec["request_object"])
    inner = orjson.loads(obj["metadata"]["annotations"][model.LAST_APPLIED])
    assert inner["data"]["password"] == obj["data"]["password"]
    assert obj["metadata"]["annotations"]["team"] == "payments"


def _processor(native_on: bool, tmp_path: Path) -> Processor:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(GREEDY_RULES)
    return Processor(Settings(native=native_on), RuleSet(load_rules(rules_file)))


FALLBACK_CASE = "secret-unreadable-last-applied"  # its own record: it sends the whole record the Python way


def _record_with_every_case() -> bytes:
    """All cases but FALLBACK_CASE in one record (the native path takes it whole), then FALLBACK_CASE's."""
    return T.eventlist([CASES[n] for n in sorted(CASES) if n != FALLBACK_CASE])


def _process_all(proc: Processor, st: PartitionState):
    a = proc.process(st, 3, b"c", _record_with_every_case(), [])
    b = proc.process(st, 4, b"c", T.eventlist([CASES[FALLBACK_CASE]]), [])
    return a, b


@pytest.mark.parametrize("native_on", [False, True])
def test_worker_outputs_hold_no_credential(native_on, tmp_path):
    if native_on and not native.available():
        pytest.skip("kaudit_native not built")
    proc = _processor(native_on, tmp_path)
    if native_on:
        assert native.normalize_record(_record_with_every_case(), "c", 256 * 1024, True) is not None
    outs = _process_all(proc, PartitionState(0, 900))
    events, alerts = [], []
    for out in outs:
        assert not out.deadletters
        assert leaks(out.events_value) == []
        events += codec("event_batch").decode(out.events_value)["events"]
        alerts += out.alerts
    assert {e["auditid"]: e["redacted"] for e in events} == {CASES[n]["auditID"]: EXPECTED[n] for n in CASES}
    greedy = [a for a in alerts if a.record["rule_id"] == "greedy-credential-grouping"]
    assert len(greedy) >= len(CASES) - 2  # a few cases share a group key (one alert per group and window)
    assert any("sha256:" in a.record["group_key"] for a in greedy)  # it did group by the (hashed) fields
    for a in alerts:
        avro, js = proc.encode_alert(a)
        assert leaks(avro) == [] and leaks(js) == []


def test_python_and_native_worker_outputs_are_identical(tmp_path):
    if not native.available():
        pytest.skip("kaudit_native not built")
    py, nat = (_process_all(_processor(n, tmp_path), PartitionState(0, 900)) for n in (False, True))
    for a, b in zip(py, nat, strict=True):
        assert a.events_value == b.events_value
        assert sorted(orjson.dumps(x.record) for x in a.alerts) == sorted(orjson.dumps(x.record) for x in b.alerts)


@pytest.mark.parametrize("name", sorted(CASES))
def test_worker_dead_letters_hold_no_credential(name, tmp_path):
    proc = _processor(True, tmp_path)
    bad = {k: v for k, v in copy.deepcopy(CASES[name]).items() if k != "auditID"}  # normalization refuses it
    unreadable_ref = {**copy.deepcopy(CASES[name]), "auditID": None, "objectRef": "secrets/s"}
    cut = orjson.dumps(CASES[name])[:-20]  # a truncated line: not JSON
    value = orjson.dumps(bad) + b"\n" + orjson.dumps(unreadable_ref) + b"\n" + cut + b"\n"
    out = proc.process(PartitionState(0, 900), 9, b"c", value, [])
    assert len(out.deadletters) == 3
    for v, hdrs in out.deadletters:
        assert leaks(v) == [] and leaks(b"".join(x for _, x in hdrs)) == []
    d = [orjson.loads(v) for v, _ in out.deadletters]
    assert d[0]["redacted"] == EXPECTED[name] and d[1]["redacted"] == ["event-objects"] and d[2]["withheld"] == 1
    whole = proc.process(PartitionState(0, 900), 10, b"c", cut, [])  # nothing readable: the whole record
    assert len(whole.deadletters) == 1 and leaks(whole.deadletters[0][0]) == []


def test_every_stage_dead_letter_is_redacted():
    """bridge (an EventList item), shipper (a line), sink (bytes): all go through deadletter.record."""
    for name, ev in CASES.items():
        bad = {**ev, "stage": "Bogus"}
        for stage, data in (("bridge", orjson.dumps(bad)), ("shipper", orjson.dumps(bad) + b"\n"),
                            ("sink", b"\x02\x00" + orjson.dumps(ev)[5:]),
                            ("worker", T.eventlist([bad, "x", 3])),
                            ("bridge", orjson.dumps(orjson.dumps(bad).decode()))):  # an event sent as a JSON string
            value, hdrs = deadletter.record("r", stage, data, cluster="c", origin="o")
            assert leaks(value) == [], (name, stage)
            assert orjson.loads(value)["stage"] == stage


def test_dead_letter_text_keeps_what_holds_no_credential():
    text, ids_, withheld = redact_text('{"kind":"Event","verb":"get","objectRef":{"resource":"pods"}}\n')
    assert (ids_, withheld) == ([], 0) and text == '{"kind":"Event","verb":"get","objectRef":{"resource":"pods"}}\n'
    text, ids_, withheld = redact_text('"just a string"')
    assert (text, ids_, withheld) == ('"just a string"', [], 0)
    text, ids_, _ = redact_text('{"data": {"k": "c2VjcmV0"}}')  # a bare object: read as a Secret would be
    assert ids_ == ["Secret.data"] and "c2VjcmV0" not in text
    text, _, withheld = redact_text('{"ok":1}\nnot json\n')
    assert withheld == 1 and text.startswith('{"ok":1}\n«withheld by kaudit')


def test_warehouse_rows_and_alerts_hold_no_credential(warehouse, tmp_path):
    client, _s, _db = warehouse
    proc = _processor(True, tmp_path)
    outs = _process_all(proc, PartitionState(0, 900))
    eb, ca = codec("event_batch"), codec("alert")
    ev, al = EventsWriter(client, True, tmp_path), AlertsWriter(client, True, tmp_path)
    ev.write([Item("events", 0, 3 + i, out.events_value, out.source_id, out.n_kept, eb.fp) for i, out in enumerate(outs)])
    all_alerts = [a for out in outs for a in out.alerts]
    al.write([Item("alerts", 0, i, proc.encode_alert(a)[0], a.record["source_id"], 1, ca.fp, key=a.alert_id)
              for i, a in enumerate(all_alerts)])  # fmt: skip
    rows = client.query("SELECT * FROM audit_events").result_rows
    assert len(rows) == len(CASES)
    assert leaks(orjson.dumps(rows, default=str)) == []
    alerts = client.query("SELECT * FROM alerts").result_rows
    assert len(alerts) == len(all_alerts) > len(CASES)
    assert leaks(orjson.dumps(alerts, default=str)) == []
    flagged = dict(client.query("SELECT auditid, redacted FROM audit_events").result_rows)
    assert flagged == {CASES[n]["auditID"]: EXPECTED[n] for n in CASES}
    tokens = client.query("SELECT count() FROM audit_events WHERE has(redacted, 'TokenRequest.status.token')")
    assert tokens.result_rows == [(2,)]


def test_events_of_the_previous_schema_still_reach_the_warehouse(warehouse, tmp_path):
    """A batch written before `redacted` existed (schemas/event_batch.v1.avsc) lands with redacted = []."""
    import fastavro

    from pipeline.models.avro import _known_by_fp

    client, _s, _db = warehouse
    old = next((fp, sch) for fp, sch in _known_by_fp().items()
               if sch["name"] == "io.kaudit.EventBatch" and fp != codec("event_batch").fp)  # fmt: skip
    rec = normalize_event(copy.deepcopy(KEPT["pod-env"]), "c")
    del rec["redacted"]
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old[1], {"source_id": "1:5", "cluster": "c", "received_at": 0, "events": [rec],
                                             "dropped_keys": []})  # fmt: skip
    EventsWriter(client, True, tmp_path).write([Item("events", 1, 5, buf.getvalue(), "1:5", 1, old[0])])
    assert client.query("SELECT auditid, redacted FROM audit_events").result_rows == [("h-pod", [])]


def test_dead_letter_fits_the_record_limit_whatever_its_data():
    """A dead letter Kafka refuses for its size would stop the component writing it: the data is cut until the
    whole value fits KAUDIT_MAX_MESSAGE_BYTES, JSON escaping included (control characters take 6 bytes each)."""
    limit = 1024 * 1024
    for data in (orjson.dumps({"kind": "Event", "verb": "get", "x": "y" * 2_000_000}),
                 orjson.dumps({"kind": "Event", "x": "\u0001" * 900_000})):  # fmt: skip
        value, _ = deadletter.record("r", "shipper", data, origin="o", limit=limit)
        assert len(value) <= limit - deadletter.HEADROOM
        got = orjson.loads(value)["data"]
        assert len(got) > 100_000  # cut, not emptied
    small = orjson.dumps({"kind": "Event", "verb": "get"})
    assert orjson.loads(deadletter.record("r", "shipper", small, limit=limit)[0])["data"] == small.decode()
