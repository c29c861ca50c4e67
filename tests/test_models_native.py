"""The compiled hot path (native/) against the Python reference: same dicts, same Avro bytes, same worker
outputs, and a clean fallback (None) for everything it does not handle."""

from __future__ import annotations

import copy
import gzip
import io
import shutil

import fastavro
import orjson
import pytest

from pipeline.agents import testing as T
from pipeline.agents.filters import load_filter
from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleSet, load_rules
from pipeline.agents.state import PartitionState, SeenIndex
from pipeline.agents.windows import WindowCounts
from pipeline.config import Settings
from pipeline.models import native
from pipeline.models.avro import codec, encode_event_batch, source_id_suffix
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import RawEvent, read_events
from pipeline.sinks.avro_ocf import read_batch_header
from tests.conftest import SAMPLES

if not native.available():
    if shutil.which("cargo"):
        pytest.fail("cargo is installed but kaudit_native is not: run `make install` (it builds native/)")
    pytest.skip("kaudit_native not built (no Rust toolchain): the Python path is the only one", allow_module_level=True)

CAP = 256 * 1024
SAMPLE_FILES = sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md")
EVENT = codec("event_batch")
# AKS Event Hub exports wrap events in records/properties.log: the Python reader's job
PYTHON_ONLY = {"eventhub-records.json", "sample_EventHubs_event.json", "sample_KubeAuditLog_event.json"}


def python_events(value: bytes, cluster: str = "c", redact: bool = True) -> list[dict]:
    return [normalize_event(it.event, cluster, max_object_bytes=CAP, redact=redact) for it in read_events(value) if isinstance(it, RawEvent)]  # fmt: skip


def event_bytes(ev: dict) -> bytes:
    """The AuditEvent bytes of one event, cut out of an EventBatch written by the reference writer."""
    whole = EVENT.encode({"source_id": "", "cluster": "", "received_at": 0, "events": [ev], "dropped_keys": []})
    assert whole[:4] == b"\x00\x00\x00\x02" and whole[-2:] == b"\x00\x00"
    return whole[4:-2]


def assert_same(value: bytes, cluster: str = "c", redact: bool = True) -> int:
    got = native.normalize_record(value, cluster, CAP, redact)
    assert got is not None, "the native path declined a record it should handle"
    want = python_events(value, cluster, redact)
    assert len(got) == len(want)
    for ev, ref in zip(got, want, strict=True):
        d = ev.to_dict()
        assert d == ref
        assert list(d) == list(ref)
        assert ev.avro + source_id_suffix("") == event_bytes(ref)  # source_id: the worker appends it (join_avro)
    return len(got)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_sample_file_same_as_python(path):
    if path.name in PYTHON_ONLY:
        assert native.normalize_record(path.read_bytes(), "c", CAP, True) is None
        return
    assert assert_same(path.read_bytes()) > 0


def test_the_sample_files_cover_most_events():
    n = sum(len(native.normalize_record(p.read_bytes(), "c", CAP, True) or []) for p in SAMPLE_FILES)
    assert n >= 950  # 1,001 sample events; only the AKS wrappers (24) go the Python way


def base_event(**over) -> dict:
    ev = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse", "auditID": "a-1",
        "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/ns/secrets/s", "verb": "create",
        "user": {"username": "alice", "uid": "u1", "groups": ["g1", "system:authenticated"],
                 "extra": {"scopes": ["a", "b"], "one": "x", "none": None}},
        "sourceIPs": ["10.0.0.1", "::1"], "userAgent": "kubectl/v1.30",
        "objectRef": {"resource": "secrets", "namespace": "ns", "name": "s", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 201, "status": "Success"},
        "requestReceivedTimestamp": "2024-02-29T23:59:59.123456Z", "stageTimestamp": "2024-03-01T00:00:00.5Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC: ok"},
    }  # fmt: skip
    ev.update(over)
    return ev


HANDMADE = {
    "secret redacted": base_event(requestObject={"kind": "Secret", "data": {"k": "dmFs", "n": 5}, "stringData": {"p": "pw"}}),
    "secret without kind": base_event(requestObject={"data": {"k": "v"}}, responseObject={"items": [{"data": {"a": "b"}}]}),
    "secret list": base_event(objectRef={"resource": "secrets"}, responseObject={"kind": "SecretList", "items": [{"kind": "Secret", "data": {"x": "y"}}, 3]}),
    "not a secret": base_event(objectRef={"resource": "configmaps"}, requestObject={"data": {"k": "v"}}),
    "escapes and unicode": base_event(requestURI="/api?q=<a>&b=\u2028", userAgent='kübectl "x" \\ \n\t\u0001',
                                      requestObject={"metadata": {"name": "🐳", "labels": {"a<b": "c&d"}}, "v": [1.5, -0.0, 1e21, 10, None, True]}),
    "unknown fields kept in extra": base_event(future={"b": 1, "a": [2]}, another="x"),
    "v1alpha1 group/version": base_event(objectRef={"resource": "deployments", "apiVersion": "apps/v1beta1"}),
    "apiGroup given": base_event(objectRef={"resource": "deployments", "apiGroup": "", "apiVersion": "apps/v1"}),
    "impersonation": base_event(impersonatedUser={"username": "system:admin", "groups": ["system:masters"]}),
    "empty impersonation": base_event(impersonatedUser={}),
    "nulls": base_event(user=None, objectRef=None, responseStatus=None, annotations=None, sourceIPs=None, requestObject=None),
    "no code": base_event(responseStatus={"status": "Failure", "message": "m", "reason": "Forbidden"}),
    "v1beta1 timestamp": {k: v for k, v in base_event(timestamp="2017-09-11T19:55:05Z").items() if k not in ("requestReceivedTimestamp", "stageTimestamp")},
    "creationTimestamp": {**{k: v for k, v in base_event().items() if k != "stageTimestamp"}, "metadata": {"creationTimestamp": "2017-09-11T19:55:05Z"}},
    "short fraction": base_event(requestReceivedTimestamp="2024-01-01T00:00:00.1Z", stageTimestamp="1999-12-31T23:59:59z"),
    "long fraction": base_event(stageTimestamp="2024-01-01T00:00:00.123456789Z"),
    "pre-1970": base_event(stageTimestamp="1969-07-20T20:17:40.000001Z"),
    "group as string": base_event(user={"username": "bob", "groups": "solo"}),
    "empty strings": base_event(verb="", level="", requestURI=""),
    "repeated annotation key": base_event(annotations={"x": "1"}),
    # Kubernetes 1.35+ (k8s.io/apiserver pkg/apis/audit/v1: authenticationMetadata.impersonationConstraint)
    "constrained impersonation": base_event(impersonatedUser={"username": "bob"}, authenticationMetadata={"impersonationConstraint": "impersonate:user-info"},
                                            annotations={"apiserver.latency.k8s.io/impersonation": "1.2ms", "authorization.k8s.io/decision": "allow"}),
    "authenticationMetadata empty or null": base_event(authenticationMetadata={}, b=None),
    "authenticationMetadata null": base_event(authenticationMetadata=None),
    "authenticationMetadata future field": base_event(authenticationMetadata={"impersonationConstraint": None, "later": [1]}),
    "forbidden impersonate-on": base_event(responseStatus={"code": 403, "message": 'pods is forbidden: User "alice" cannot impersonate-on:user-info:list resource "pods" in API group "" in the namespace "default"'}),
    "forbidden quoted user": base_event(responseStatus={"code": 403, "message": 'forbidden: User "a\\" cannot delete x\\"ü" cannot get path "/x"'}),
    "forbidden unterminated": base_event(responseStatus={"code": 403, "message": 'forbidden: User "abc\\'}),
    "forbidden other form": base_event(responseStatus={"code": 403, "message": "no User here"}),
    "not a 403": base_event(responseStatus={"code": 401, "message": 'User "a" cannot get path "/"'}),
}


@pytest.mark.parametrize("name", sorted(HANDMADE))
def test_handmade_events_same_as_python(name):
    ev = HANDMADE[name]
    assert_same(T.eventlist([ev]))
    assert_same(orjson.dumps(ev))  # a single event
    assert_same(orjson.dumps(ev) + b"\n\n" + orjson.dumps({**ev, "auditID": "a-2"}) + b"\n")  # JSON lines


def test_redaction_off_keeps_secret_values():
    ev = HANDMADE["secret redacted"]
    assert_same(T.eventlist([ev]), redact=False)
    got = native.normalize_record(T.eventlist([ev]), "c", CAP, False)
    assert "dmFs" in got[0]["request_object"]


def test_pretty_printed_eventlist():
    assert_same(orjson.dumps({"kind": "EventList", "items": [base_event(), base_event(auditID="b")]}, option=orjson.OPT_INDENT_2))


def test_event_mapping_interface():
    (ev,) = native.normalize_record(T.eventlist([HANDMADE["impersonation"]]), "prod", CAP, True)
    assert ev["cluster"] == "prod" and ev.get("verb") == "create" and ev["responsestatus_code"] == 201
    assert ev.get("nope") is None and ev.get("nope", 7) == 7 and "verb" in ev and "nope" not in ev
    assert ev["usergroups"] == ["g1", "system:authenticated"]
    assert ev["user_extra"] == {"scopes": "a,b", "one": "x", "none": ""}
    assert ev["impersonated_username"] == "system:admin"
    with pytest.raises(KeyError):
        ev["nope"]
    assert len(ev) == len(ev.keys()) == len(python_events(T.eventlist([HANDMADE["impersonation"]]))[0])


FALLBACKS = {
    "code as string": T.eventlist([base_event(responseStatus={"code": "403"})]),
    "verb as number": T.eventlist([base_event(verb=5)]),
    "timestamp with offset": T.eventlist([base_event(stageTimestamp="2024-01-01T01:00:00+01:00")]),
    "bad date": T.eventlist([base_event(stageTimestamp="2024-02-30T00:00:00Z")]),
    "no timestamp": T.eventlist([{k: v for k, v in base_event().items() if "Timestamp" not in k}]),
    "no auditID": T.eventlist([{k: v for k, v in base_event().items() if k != "auditID"}]),
    "unknown stage": T.eventlist([base_event(stage="Later")]),
    "object over the cap": T.eventlist([base_event(requestObject={"blob": "x" * (CAP + 10)})]),
    "gzip": gzip.compress(T.eventlist([base_event()])),
    "BOM": b"\xef\xbb\xbf" + T.eventlist([base_event()]),
    "AKS record": orjson.dumps({"records": [{"category": "kube-audit", "properties": {"log": orjson.dumps(base_event()).decode()}}]}),
    "garbage line": orjson.dumps(base_event()) + b"\nnot json\n",
    "item not an object": T.eventlist([base_event(), 3]),
    "code out of int range": T.eventlist([base_event(responseStatus={"code": 2**40})]),
    "authenticationMetadata not an object": T.eventlist([base_event(authenticationMetadata="x")]),
    "impersonationConstraint as number": T.eventlist([base_event(authenticationMetadata={"impersonationConstraint": 5})]),
    "repeated unknown key": b'{"auditID":"x","stage":"ResponseComplete","stageTimestamp":"2024-01-01T00:00:00Z","z":1,"z":2}',
    "empty": b"",
    "a JSON array": orjson.dumps([base_event()]),
}


# event_bytes (normalize.event_size: len(orjson.dumps(event))) measured on the text by native/src/sizes.rs
GO_STYLE = (
    rb'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Request","auditID":"go-1","stage":"ResponseComplete",'
    rb'"requestURI":"/api/v1/pods?labelSelector=a%3Db\u0026x=\u003cy\u003e","verb":"list","user":{"username":"u"},'
    rb'"userAgent":"k\u00fcbectl \/ \ud83d\udc33 \"q\" \u0001\u001f\b","stageTimestamp":"2024-01-01T00:00:00Z",'
    rb'"requestObject":{"n":[1e+21,1.50,-0.0,0,12345678901234567890,1E2,-7],"s":"\t"}}'
)
SIZE_CASES = {
    "Go escapes, floats, surrogates": GO_STYLE,
    "pretty EventList": orjson.dumps({"kind": "EventList", "items": [base_event(), base_event(auditID="z")]},
                                     option=orjson.OPT_INDENT_2),  # fmt: skip
    "spaces around tokens": b' { "auditID" : "s" , "stage":"ResponseComplete" ,"stageTimestamp": "2024-01-01T00:00:00Z" ,"x" : [ 1 , { } , [ ] ] } ',
    "empty EventList": b'{"kind":"EventList","items":[],"metadata":{}}\n' + orjson.dumps(base_event()),
}


@pytest.mark.parametrize("name", sorted(SIZE_CASES))
def test_event_bytes_same_as_python(name):
    assert assert_same(SIZE_CASES[name]) >= 1


def test_event_bytes_is_the_compact_json_length():
    (ev,) = native.normalize_record(orjson.dumps(base_event()), "c", CAP, True)
    assert ev["event_bytes"] == len(orjson.dumps(base_event())) > 500
    redacted = base_event(requestObject={"kind": "Secret", "data": {"k": "x" * 1000}})
    (ev,) = native.normalize_record(orjson.dumps(redacted), "c", CAP, True)
    assert ev["event_bytes"] == len(orjson.dumps(redacted))  # measured before redaction shortened it
    assert len(ev["request_object"]) < 200


def test_event_bytes_finds_every_special_byte_at_every_position_of_a_word():
    """sizes.rs scans strings eight bytes at a time: a quote, backslash escape or control character at any
    offset (in, across and after a word, and in UTF-8 text) must change the size exactly as orjson counts it."""
    specials = ['"', "\\", "\n", "\t", "\x01", "\x1f", "/", "\u00fc", "\u20ac", "\U0001f433", " "]
    n = 0
    for length in (0, 1, 7, 8, 9, 15, 16, 17, 23):
        for at in range(length + 1):
            for sp in specials:
                text = "a" * at + sp + "b" * (length - at)
                ev = base_event(userAgent=text, requestObject={"k" * (at % 9): text[::-1]})
                raw = orjson.dumps(ev)
                (got,) = native.normalize_record(raw, "c", CAP, True)
                assert got["event_bytes"] == len(raw), (length, at, sp)
                n += 1
    assert n == 11 * sum(k + 1 for k in (0, 1, 7, 8, 9, 15, 16, 17, 23))


SIZE_FALLBACKS = {
    "repeated known key": b'{"auditID":"x","stage":"ResponseComplete","verb":"get","verb":"list","stageTimestamp":"2024-01-01T00:00:00Z"}',
    "repeated key inside an object": b'{"auditID":"x","stage":"ResponseComplete","stageTimestamp":"2024-01-01T00:00:00Z","requestObject":{"a":1,"a":2}}',
    "negative zero integer": b'{"auditID":"x","stage":"ResponseComplete","stageTimestamp":"2024-01-01T00:00:00Z","requestObject":{"a":-0}}',
}


@pytest.mark.parametrize("name", sorted(SIZE_FALLBACKS))
def test_event_bytes_unclear_cases_take_the_python_path(name):
    assert native.normalize_record(SIZE_FALLBACKS[name], "c", CAP, True) is None
    (ev,) = python_events(SIZE_FALLBACKS[name])
    assert ev["event_bytes"] > 0


@pytest.mark.parametrize("name", sorted(FALLBACKS))
def test_unusual_records_take_the_python_path(name):
    assert native.normalize_record(FALLBACKS[name], "c", CAP, True) is None


def run_processor(records: list[T.RawRecord], use_native: bool, noise=None, **settings) -> list:
    proc = Processor(Settings(native=use_native, **settings), RuleSet(load_rules()), noise)
    assert proc.native is use_native
    state, outs = PartitionState(0, 900), []
    for off, r in enumerate(records):
        o = proc.process(state, off, r.cluster.encode(), r.value, r.headers, now=1_700_000_000.0)
        outs.append((o.events_value, o.verb_value, o.status_value, [(a.alert_id, proc.encode_alert(a)) for a in o.alerts],
                     [d[0] for d in o.deadletters], o.n_events, o.n_kept, o.n_dup, o.n_bad))  # fmt: skip
    return outs


def test_worker_outputs_identical_with_and_without_native(tmp_path):
    records = []
    for i, path in enumerate(SAMPLE_FILES):
        value = path.read_bytes()
        records.append(T.raw_record(f"c{i % 3}", value))
        records.append(T.raw_record(f"c{i % 3}", value))  # the same batch again: all duplicates
    records += [T.raw_record("odd", v) for v in FALLBACKS.values()]
    records.append(T.raw_record("skip", T.eventlist([base_event(auditID=f"s{i}") for i in range(5)]), skip_items="1,3"))
    fixed = copy.deepcopy(records)
    with_native, without = run_processor(records, True), run_processor(fixed, False)
    assert with_native == without
    assert sum(o[3] != [] for o in with_native) > 10  # alerts were produced and compared
    assert sum(o[5] for o in with_native) > 1900
    # with a noise filter (drops and samples) and only some stages counted
    noise_file = tmp_path / "noise.yaml"
    noise_file.write_text(
        "filters:\n"
        "  - {name: reads, match: {verb: {in: [get, list, watch]}}, action: sample, keep: 0.5}\n"
        "  - {name: events, match: {objectref_resource: events}, action: drop}\n"
    )
    noise = load_filter(noise_file)
    opts = {"count_stages": "ResponseComplete,Panic", "window_seconds": 300}
    a = run_processor(copy.deepcopy(fixed), True, noise, **opts)
    b = run_processor(copy.deepcopy(fixed), False, noise, **opts)
    assert a == b
    assert sum(o[6] for o in a) < sum(o[6] for o in with_native)  # the filter dropped some


def test_event_batch_assembly_matches_the_codec():
    """encode_event_batch writes the events array as one sized block (negative count, byte size): any Avro reader
    decodes it to what the codec encodes, and the run of AuditEvent records sits where the header says."""
    evs = native.normalize_record(T.eventlist([base_event(auditID=f"x{i}") for i in range(3)]), "c", CAP, True)
    dropped = [("d1", "ResponseComplete")]
    record = {"source_id": "1:2", "cluster": "c", "received_at": 1_700_000_000_000_000,
              "events": [{**e.to_dict(), "source_id": "1:2"} for e in evs],
              "dropped_keys": [{"auditid": "d1", "stage": "ResponseComplete"}]}  # fmt: skip
    joined = native.join_avro(evs, [0, 1, 2], source_id_suffix("1:2"))
    assert joined == b"".join(e.avro + source_id_suffix("1:2") for e in evs)
    value = encode_event_batch("1:2", "c", 1_700_000_000_000_000, joined, 3, dropped)
    assert value != EVENT.encode(record)  # the codec writes the count alone ...
    assert EVENT.decode(value, EVENT.fp) == EVENT.decode(EVENT.encode(record), EVENT.fp) == record  # ... same record
    assert fastavro.schemaless_reader(io.BytesIO(value), EVENT.schema, None) == record  # and fastavro's own reader
    h = read_batch_header(value)
    assert (h.source_id, h.n_events) == ("1:2", 3) and value[h.events_start : h.events_end] == joined
    empty = encode_event_batch("1:2", "c", 5, b"", 0, [])
    assert empty == EVENT.encode({"source_id": "1:2", "cluster": "c", "received_at": 5, "events": [], "dropped_keys": []})
    assert read_batch_header(empty).events_end == read_batch_header(empty).events_start
    assert native.join_avro(evs, [2, 0]) == evs[2].avro + evs[0].avro  # no suffix: the normalized fields alone


def test_native_dedup_pass_equals_the_python_one():
    """SeenKeys.first_sightings (hashed keys, native loop) answers like SeenIndex's over the same records: the
    sample files (with their own repeated auditIDs), each record seen twice, a replay, a skip set, expiry."""
    values = [p.read_bytes() for p in SAMPLE_FILES if p.name not in PYTHON_ONLY]
    records = [evs for v in values if (evs := native.normalize_record(v, "c", CAP, True))]
    assert len(records) > 10
    py, nat = SeenIndex(100), native.SeenKeys(100)
    got, want = [], []
    plan = [(off, evs, {1, 3}) for off, evs in enumerate(records)]
    plan += [(len(records) + off, evs, set()) for off, evs in enumerate(records)]  # later: all duplicates
    plan += [(0, records[0], {1, 3}), (2, records[2], set())]  # replays: first again at their own offset
    for off, evs, skip in plan:
        for cluster in ("c", "d"):
            want.append(py.first_sightings(evs, cluster, off, 1000.0 + off, skip))
            got.append(nat.first_sightings(evs, cluster, off, 1000.0 + off, skip))
    assert got == want
    assert sum(len(f) for f, _ in got) > 500 and sum(d for _, d in got) > 500
    assert len(nat) == len(py) > 500
    assert nat.first_at(("c", records[0][0]["auditid"], records[0][0]["stage"]), 10**6, 2000.0) is False
    assert nat.expire(1000.0 + 100 + len(records) // 2) == py.expire(1000.0 + 100 + len(records) // 2) > 0
    assert len(nat) == len(py)


def test_record_helpers_match_the_fields():
    value = b"".join(p.read_bytes() for p in SAMPLE_FILES if p.name not in PYTHON_ONLY and p.suffix == ".log")
    evs = native.normalize_record(value, "c", CAP, True)
    assert evs and len(evs) > 100
    idx = list(range(0, len(evs), 2))
    flags = [i % 3 == 0 for i in idx]
    for stages in (None, ["ResponseComplete"]):
        want_v, want_c = WindowCounts(), WindowCounts()
        for i, d in zip(idx, flags, strict=True):
            e = evs[i]
            if stages is None or e["stage"] in stages:
                ws = e["stage_ts"] - e["stage_ts"] % 60_000_000
                want_v.add("c", ws, e["verb"], d)
                want_c.add("c", ws, e["responsestatus_code"], d)
        got_v, got_c = native.window_counts(evs, idx, flags, "c", 60_000_000, stages)
        assert got_v == want_v.counts and got_c == want_c.counts


def test_hashes_follow_the_rule_memo_key_of_a_dict():
    """values_hash / rule_hashes stand for the tuples the Python path keys the rule memo and index by: equal
    tuples give equal hashes, different tuples different ones."""
    from pipeline.agents.conditions import EventView
    from pipeline.agents.rules import GUARD_FIELDS, key_function

    fields = tuple(sorted(GUARD_FIELDS))
    key = key_function(fields)
    evs = [e for p in SAMPLE_FILES for e in native.normalize_record(p.read_bytes(), "c", CAP, True) or []]
    assert len(evs) > 900
    rule_fields = ("objectref_resource", "verb", "stage", "objectref_subresource", "responsestatus_code")
    resolved = native.FieldSet(list(fields))  # what rule slots pass: names resolved once
    assert [e.values_hash(resolved) for e in evs] == [e.values_hash(list(fields)) for e in evs]
    pairs = {
        "guard": [(key(EventView(d), d), e.values_hash(resolved)) for e in evs for d in [e.to_dict()]],
        "rule index": list(zip([tuple(e[f] for f in rule_fields) for e in evs], native.rule_hashes(evs), strict=True)),
    }
    for name, kv in pairs.items():
        assert len({k for k, _ in kv}) == len({h for _, h in kv}) == len(set(kv)) > 50, name
    (ev,) = native.normalize_record(T.eventlist([base_event(sourceIPs=None)]), "c", CAP, True)
    (other,) = native.normalize_record(T.eventlist([base_event(sourceIPs=[""])]), "c", CAP, True)
    assert ev.values_hash(["sourceip"]) == other.values_hash(["sourceip"])  # no IP and "" are the same key
    # sourceip is the peer (the last address); those before it are the client's X-Forwarded-For
    fwd, peer, claimed = (native.normalize_record(T.eventlist([base_event(sourceIPs=ips)]), "c", CAP, True)[0]
                          for ips in (["203.0.113.9", "198.51.100.1", "10.0.0.1"], ["10.0.0.1"], ["203.0.113.9"]))  # fmt: skip
    assert fwd.values_hash(["sourceip"]) == peer.values_hash(["sourceip"]) != claimed.values_hash(["sourceip"])
    d = fwd.to_dict()
    assert key_function(("sourceip",))(EventView(d), d) == ("10.0.0.1",)
    with pytest.raises(KeyError):
        ev.values_hash(["nope"])
    with pytest.raises(KeyError):
        native.FieldSet(["verb", "nope"])


def test_alert_encoding_same_as_the_codec():
    codec_alert = codec("alert")
    records = run_processor([T.raw_record("c", p.read_bytes()) for p in SAMPLE_FILES], True)
    assert sum(len(o[3]) for o in records) > 300  # run_processor encodes every alert (native when available)
    proc = Processor(Settings(), RuleSet(load_rules()))
    state = PartitionState(0, 900)
    n = 0
    for off, p in enumerate(SAMPLE_FILES):
        for a in proc.process(state, off, b"c", p.read_bytes(), [], now=1.0).alerts:
            assert native.encode_alert(a.record) == codec_alert.encode(a.record)
            n += 1
    assert n > 300
    rec = dict(a.record)
    for bad in ({"count": "3"}, {"responsestatus_code": 2**40}, {"tags": [1]}, {"usergroups": None}, {"verb": True}):
        with pytest.raises(Exception):  # noqa: B017 - any error: the caller falls back to the codec
            native.encode_alert({**rec, **bad})
    with pytest.raises(KeyError):
        native.encode_alert({k: v for k, v in rec.items() if k != "title"})
