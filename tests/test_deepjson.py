"""pipeline.models.deepjson and every reader that uses it: JSON nested as deep as Go writes it (10,000 levels) is
read, written back byte for byte, normalized, tested by the rules and stored with the rest of its batch."""

from __future__ import annotations

import orjson
import pytest

from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleSet, example_event, load_rules
from pipeline.agents.state import PartitionState
from pipeline.config import Settings
from pipeline.ingest.bridge import split
from pipeline.ingest.bridge.server import classify
from pipeline.models import deepjson
from pipeline.models.normalize import event_size, normalize_event
from pipeline.models.readers import RawEvent, read_events


def nested(depth: int, leaf: bytes = b'"1"') -> bytes:
    return b'{"a":[' * (depth // 2) + leaf + b"]}" * (depth // 2)


def event(auditid: str, request: bytes, verb: str = "patch") -> bytes:
    """One audit event's JSON text with ``request`` as its requestObject, as the API server writes it."""
    base = example_event({"verb": verb, "objectRef": {"resource": "deployments", "namespace": "d", "name": "w",
                                                      "apiGroup": "apps"}, "responseStatus": {"code": 422}})  # fmt: skip
    base["auditID"] = auditid
    text = orjson.dumps(base)
    return text[:-1] + b',"requestObject":' + request + b"}"


@pytest.mark.parametrize("depth", [10, 300, 1100, 9000])
def test_loads_reads_any_depth_and_writes_it_back_exactly(depth):
    text = b'{"kind":"EventList","items":[' + event("a", nested(depth)) + b',{"s":"{[\\"]}"}]}'
    doc = deepjson.loads(text, check=True)
    assert orjson.dumps(doc) == text
    assert doc["items"][1] == {"s": '{["]}'}
    if depth > 254:  # cut where orjson could not write it: an opaque fragment, the levels above it plain JSON
        node, levels = doc, 0
        while isinstance(node, dict | list):
            node = node["items"][0] if levels == 0 else (node.get("requestObject", node.get("a")) if isinstance(node, dict) else node[0])
            levels += 1
        assert isinstance(node, orjson.Fragment) and levels < deepjson.CUT
    with pytest.raises(orjson.JSONDecodeError):
        deepjson.loads(b'{"a":' * 2000)  # not JSON at any depth
    assert deepjson.loads(b"[1, 2]") == [1, 2]


def test_item_spans_cut_an_eventlist_at_any_depth():
    items = [event("a", nested(5000)), b'{"auditID":"b","q":[1,{"items":[2]}]}', event("c", b"{}")]
    body = b'{"kind":"EventList","metadata":{},"items":[' + b", ".join(items) + b"]}"
    assert [body[a:b] for a, b in deepjson.item_spans(body)] == items
    assert deepjson.item_spans(b'{"kind":"Event"}') is None and deepjson.item_spans(b'{"items":[]}') == []
    # the bridge's splitter falls back to them when msgspec cannot recurse that deep
    assert split.item_bytes(body) == items


def test_bridge_accepts_a_batch_with_a_deep_event():
    body = b'{"kind":"EventList","items":[' + event("a", nested(9000)) + b"," + event("b", b'{"x":1}') + b"]}"
    assert classify(body) == ("eventlist", 2, [])


def test_worker_python_path_stores_and_flags_the_batch():
    # a deep merge patch, a deep JSON patch value (the rules copy patch values), a plain delete that alerts
    deep_patch = b'[{"op":"add","path":"/spec/template/spec/hostPID","value":true},{"op":"add","path":"/x","value":' + nested(3000) + b"}]"
    items = [event("m", nested(1500)), event("j", deep_patch), event("d", b'{"kind":"DeleteOptions"}', verb="delete")]
    body = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + b",".join(items) + b"]}"
    got = [it for it in read_events(body) if isinstance(it, RawEvent)]
    assert [e.event["auditID"] for e in got] == ["m", "j", "d"]
    for it, text in zip(got, items, strict=True):
        ev = normalize_event(it.event, "c")
        assert event_size(it.event) == len(text)
        assert ev["request_object"] == orjson.dumps(it.event["requestObject"]).decode()  # stored as written
    s = Settings()
    out = Processor(s, RuleSet(load_rules())).process(PartitionState(0, 900), 0, b"c1", body, [])
    assert (out.n_events, out.n_kept, out.n_bad, out.deadletters) == (3, 3, 0, [])
    rules = {a.record["rule_id"] for a in out.alerts}
    assert {"risky-verb", "deployment-deleted", "host-pid-pod"} <= rules  # the deep JSON patch's hostPID is seen


def test_lone_surrogate_escapes_read_as_go_reads_them():
    # Go's decoder reads a lone surrogate escape as U+FFFD; an escaped backslash before "u" is no escape at all
    cases = {rb'"\ud800"': "\ufffd", rb'"x\udc00y"': "x\ufffdy", rb'"\ud83d\ude00"': "\U0001f600",
             rb'"\\ud800"': "\\ud800", rb'"\\\ud800"': "\\\ufffd", rb'"\uD800\u0041"': "\ufffdA"}  # fmt: skip
    for text, want in cases.items():
        assert deepjson.loads(text) == want, text
        assert len(deepjson.go_surrogates(text)) == len(text)  # six bytes for six: event sizes stay exact
    with pytest.raises(orjson.JSONDecodeError):
        deepjson.loads(rb'{"a": "\ud800"')  # still not JSON
    deep = rb'{"s":"\ud800","d":' + nested(1200, rb'"\udc00"') + b"}"  # both at once
    doc = deepjson.loads(deep, check=True)
    assert doc["s"] == "\ufffd" and orjson.dumps(doc["d"]) == nested(1200, rb'"\ufffd"')  # read as Go does


def test_a_batch_with_a_lone_surrogate_is_accepted_split_and_stored():
    lone = event("s", rb'{"metadata":{"annotations":{"x":"\ud800"}}}', verb="patch")
    body = b'{"kind":"EventList","items":[' + lone + b"," + event("b", b'{"kind":"DeleteOptions"}', verb="delete") + b"]}"
    assert classify(body) == ("eventlist", 2, [])  # was a 400 for the whole batch, which the API server drops
    assert split.item_bytes(body) == [lone, event("b", b'{"kind":"DeleteOptions"}', verb="delete")]
    out = Processor(Settings(), RuleSet(load_rules())).process(PartitionState(0, 900), 0, b"c1", body, [])
    assert (out.n_events, out.n_kept, out.n_bad, out.deadletters) == (2, 2, 0, [])
    assert "deployment-deleted" in {a.record["rule_id"] for a in out.alerts}


def test_numbers_past_float64_are_kept_as_their_text():
    # Go's scanner takes any number; orjson refuses 1e400 (msgspec too) and reads a 30-digit integer as a float
    text = b'{"x":1e400,"y":-2E+999,"z":123456789012345678901234567890,"w":1.5,"v":7,"s":"\\ud800","d":' + nested(1100) + b"}"
    doc = deepjson.loads(text, check=True)
    assert [doc[k] for k in "wvs"] == [1.5, 7, "\ufffd"]
    assert [orjson.dumps(doc[k]) for k in "xyz"] == [b"1e400", b"-2E+999", b"123456789012345678901234567890"]
    assert orjson.dumps(doc["d"]) == nested(1100)
    body = b'{"kind":"EventList","items":[' + event("n", b'{"x":1e400}') + b"," + event("b", b"{}", verb="delete") + b"]}"
    assert classify(body) == ("eventlist", 2, [])
    out = Processor(Settings(), RuleSet(load_rules())).process(PartitionState(0, 900), 0, b"c1", body, [])
    assert (out.n_events, out.n_kept, out.deadletters) == (2, 2, [])
    for bad in (b"[NaN]", b"[1e400, Infinity]", b'{"x":1e400'):
        with pytest.raises(orjson.JSONDecodeError):
            deepjson.loads(bad)


def test_bytes_that_are_not_utf8_read_as_the_worker_decodes_them():
    # a PATCH sent in Latin-1: the API server applies it (200) and logs its body as it came
    latin = event("l", b'{"metadata":{"annotations":{"x":"caf\xe9"}}}')
    assert deepjson.loads(latin)["requestObject"]["metadata"]["annotations"]["x"] == "caf\ufffd"
    body = b'{"kind":"EventList","items":[' + latin + b"," + event("b", b"{}", verb="delete") + b"]}"
    assert classify(body) == ("eventlist", 2, [])  # was a 400 for the whole batch
    assert split.item_bytes(body)[0] == latin  # the raw record keeps the bytes as they came
    out = Processor(Settings(), RuleSet(load_rules())).process(PartitionState(0, 900), 0, b"c1", body, [])
    assert (out.n_events, out.n_kept, out.deadletters) == (2, 2, [])
