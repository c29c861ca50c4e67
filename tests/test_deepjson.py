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
