"""The compiled Avro writer (pipeline.models.avro) writes exactly fastavro's bytes, and defers to fastavro
(same bytes or same error) for anything it does not handle itself."""

from __future__ import annotations

import pytest

from pipeline.models.avro import _WRITERS, _compiled_writer, _varint, _varint_slow, codec
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import RawEvent, read_events
from tests.conftest import sample_files

STEMS = ("event_batch", "verb_stats", "status_stats", "alert", "audit_event")


def _sample_events() -> list[dict]:
    out = []
    for p in sample_files():
        out += [normalize_event(i.event, "c1") for i in read_events(p.read_bytes()) if isinstance(i, RawEvent)]
    return out


def test_every_kaudit_schema_gets_a_compiled_writer():
    for stem in STEMS:
        c = codec(stem)
        assert _compiled_writer(c.fp, c.schema) is not None, stem
        assert c.fp in _WRITERS


def test_event_batches_of_every_sample_are_byte_identical():
    events = _sample_events()
    c = codec("event_batch")
    for i in range(0, len(events), 97):
        batch = {"source_id": f"0:{i}", "cluster": "c1", "received_at": 1_700_000_000_000_000 + i,
                 "events": events[i : i + 97], "dropped_keys": [{"auditid": "a", "stage": "ResponseComplete"}] * (i % 3)}  # fmt: skip
        for _ in range(2):  # second round hits the per-field caches
            assert c.encode(batch) == c.encode_fastavro(batch)
    single = codec("audit_event")
    for ev in events[:200]:
        assert single.encode(ev) == single.encode_fastavro(ev)


@pytest.mark.parametrize(
    "n", [0, 1, -1, 63, 64, -64, -65, 127, 128, 4095, 4096, 8191, 8192, 16383, 16384, 2**27, 2**28 - 1, 2**28,
          -(2**28), 2**35 + 5, 1_714_564_810_123_456, -1_714_564_810_123_456, 2**62, 2**63 - 1, -(2**63)],
)  # fmt: skip
def test_longs_and_ints_match(n):
    c = codec("verb_stats")
    rec = {"source_id": "x", "window_seconds": 60, "rows": [{"cluster": "c", "window_start": n, "verb": "get", "count": n, "dropped": 0}]}
    assert c.encode(rec) == c.encode_fastavro(rec)
    if -(2**31) <= n < 2**31:
        rec["window_seconds"] = n
        assert c.encode(rec) == c.encode_fastavro(rec)


def test_varint_helper_matches_the_reference_loop():
    for n in [*range(-5000, 5000, 7), *(3**k for k in range(40)), *(-(3**k) for k in range(40))]:
        z = (n << 1) ^ (n >> 63)
        assert _varint(n) == _varint_slow(z), n


def test_strings_maps_arrays_defaults_and_unicode():
    c = codec("audit_event")
    base = {"cluster": "c", "auditid": "a", "stage": "ResponseComplete", "request_received_ts": 1, "stage_ts": 2}
    cases = [
        base,  # every defaulted field missing
        {**base, "username": "é" * 40, "useragent": "x" * 5000, "request_object": "🙂" * 2000},
        {**base, "usergroups": ["a", "b", "a"], "sourceips": [], "annotations": {"k": "v", "ü": "ß"}, "user_extra": {}},
        {**base, "usergroups": ("t1", "t2"), "objects_truncated": True, "responsestatus_code": 403},
        {**base, "responsestatus_code": -7, "objects_truncated": False, "extra": "{}"},
    ]
    for rec in cases:
        for _ in range(2):
            assert c.encode(rec) == c.encode_fastavro(rec)


@pytest.mark.parametrize(
    "bad",
    [
        {"username": None},
        {"username": 5},
        {"usergroups": [1, 2]},
        {"usergroups": "abc"},
        {"annotations": {"k": 1}},
        {"annotations": {"k": {"x": 1}}},
        {"responsestatus_code": "200"},
        {"responsestatus_code": 2.5},
        {"objects_truncated": 1},
        {"stage_ts": 2**64},
        {"stage": None},
    ],
)
def test_unusual_values_behave_exactly_like_fastavro(bad):
    c = codec("audit_event")
    rec = {"cluster": "c", "auditid": "a", "stage": "ResponseComplete", "request_received_ts": 1, "stage_ts": 2, **bad}
    try:
        expected: bytes | type = c.encode_fastavro(rec)
    except Exception as exc:  # noqa: BLE001
        expected = type(exc)
    try:
        got: bytes | type = c.encode(rec)
    except Exception as exc:  # noqa: BLE001
        got = type(exc)
    assert got == expected


def test_missing_required_field_raises_like_fastavro():
    c = codec("audit_event")
    with pytest.raises(ValueError):
        c.encode_fastavro({"cluster": "c"})
    with pytest.raises(ValueError):
        c.encode({"cluster": "c"})
