"""A webhook batch larger than a Kafka record may be is cut into records that fit (pipeline/ingest/bridge/split.py)
instead of refused (the API server would drop it after five attempts): every item's exact bytes are stored once,
invalid items still go to the dead-letter topic in their place, an item too large for any record is stored without
its objects (pipeline/ingest/oversize.py) and dead-lettered whole, a retried batch is not stored twice by the worker.
Real bridge, real Kafka, real worker."""

from __future__ import annotations

import orjson
import pytest

from pipeline import config
from pipeline.agents import testing as T
from pipeline.ingest import oversize
from pipeline.ingest.bridge import split
from pipeline.ingest.bridge.server import classify
from pipeline.ingest.bridge.threaded import bridge_thread
from pipeline.ingest.testing import read_topic
from pipeline.models.readers import RawEvent, read_events
from tests.test_ingest_bridge import EV, make_bridge, post, tokens_file  # noqa: F401 - fixture

LIMIT = 256 * 1024  # KAUDIT_MAX_MESSAGE_BYTES for these tests: a managed Kafka's 1 MiB default, scaled down


def event(i: int, pad: int = 2000) -> dict:
    return {**EV, "auditID": f"00000000-0000-0000-0000-{i:012d}", "level": "Request",
            "requestObject": {"kind": "ConfigMap", "data": {"blob": "x" * pad, "i": str(i)}}}  # fmt: skip


def body_of(items: list) -> bytes:
    # the API server's own layout: its JSON encoder, one EventList, items as it wrote them
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items})


def test_split_keeps_item_bytes_and_places() -> None:
    items = [event(i, pad=(i % 7) * 9000) for i in range(300)]
    items[5] = {"auditID": "", "stage": "Nope"}  # invalid: dead-lettered, skipped in its part
    body = body_of(items)
    fmt, good, bad = classify(body)
    assert (fmt, good, [b[0] for b in bad]) == ("eventlist", 299, [5])
    parts, bad2 = split.split(body, LIMIT, bad)
    assert len(parts) > 1 and all(len(p.body()) <= LIMIT for p in parts)
    assert bad2 == bad
    got = [raw for p in parts for raw in p.items]
    assert got == split.item_bytes(body) == [orjson.dumps(it) for it in items]  # exact, in order
    skipped = [p.items[k] for p in parts for k in p.skip]
    assert skipped == [orjson.dumps(items[5])]
    for p in parts:  # each part is an EventList the worker reads like any other
        evs = [x for x in read_events(p.body()) if isinstance(x, RawEvent)]
        assert len(evs) == len(p.items)


def truncated(item: dict) -> dict:
    """What the bridge stores of an item too large for any record: the API server truncate backend's form."""
    cut = {k: v for k, v in item.items() if k not in ("requestObject", "responseObject")}
    size = str(len(orjson.dumps(item)))
    return {**cut, "annotations": {**item.get("annotations", {}), oversize.ANNOTATION_TRUNCATED: "true", oversize.ANNOTATION_ORIGINAL_BYTES: size}}


def test_an_item_too_large_for_any_record_is_stored_without_its_objects() -> None:
    big = {**event(1, pad=LIMIT), "annotations": {"authorization.k8s.io/decision": "allow"}}
    items = [event(0), big, event(2)]
    parts, bad = split.split(body_of(items), LIMIT, [])
    assert [len(p.items) for p in parts] == [3] and [(i, r) for i, r, _ in bad] == [(1, split.TRUNCATED)]
    assert orjson.dumps(bad[0][2]) == orjson.dumps(big)  # the original goes to the dead-letter topic
    assert parts[0].items[0] == orjson.dumps(items[0]) and parts[0].items[2] == orjson.dumps(items[2])
    assert orjson.loads(parts[0].items[1]) == truncated(big)
    assert orjson.loads(parts[0].items[1])["annotations"]["authorization.k8s.io/decision"] == "allow"


def test_an_item_too_large_even_without_objects_is_only_dead_lettered() -> None:
    items = [event(0), {**event(1), "requestURI": "/api/v1/pods?x=" + "y" * LIMIT}, event(2)]
    parts, bad = split.split(body_of(items), LIMIT, [])
    assert [len(p.items) for p in parts] == [2] and [(i, r) for i, r, _ in bad] == [(1, split.TOO_LARGE)]


def test_truncate_refuses_what_is_not_one_event_object() -> None:
    assert oversize.truncate(b"[1, 2]", LIMIT) is None
    assert oversize.truncate(b"{not json", LIMIT) is None
    got = orjson.loads(oversize.truncate(orjson.dumps({**EV, "annotations": "bad"}), LIMIT) or b"")
    assert got["annotations"] == {oversize.ANNOTATION_TRUNCATED: "true", oversize.ANNOTATION_ORIGINAL_BYTES: str(len(orjson.dumps({**EV, "annotations": "bad"})))}


@pytest.mark.kafka
def test_large_batches_are_stored_whole(settings, tokens_file) -> None:  # noqa: F811
    s = settings.model_copy(update={"max_message_bytes": LIMIT})
    items = [event(i, pad=(i % 5) * 3000) for i in range(400)]  # ~1.2 MB: five times the limit
    items[7] = {"auditID": "", "stage": "Nope"}
    huge = event(900, pad=LIMIT)
    items.append(huge)
    body = body_of(items)
    lone = orjson.dumps({**event(901, pad=LIMIT), "kind": "Event", "apiVersion": "audit.k8s.io/v1"})
    with bridge_thread(make_bridge(s, tokens_file)) as url:
        status, reply, _ = post(f"{url}/audit/alpha", body)
        assert status == 200, reply
        assert reply["accepted"] == 400 and reply["deadletter"] == 2 and reply["records"] >= 5
        assert post(f"{url}/audit/alpha", body)[0] == 200  # the API server retrying after a lost answer
        status, reply, _ = post(f"{url}/audit/alpha", lone)
        assert (status, reply["accepted"], reply["deadletter"]) == (200, 1, 1)
    raws = read_topic(s.kafka_bootstrap, s.topic(config.RAW))  # one partition: the cluster is the key
    lone_raw, raws = raws[-1], raws[:-1]
    assert len(raws) == 2 * reply_records(raws)
    assert all(len(r.value) <= LIMIT for r in [*raws, lone_raw])
    stored = [raw for r in raws[: len(raws) // 2] for raw in split.item_bytes(r.value)]
    assert stored[:-1] == [orjson.dumps(it) for it in items if it is not huge]
    assert orjson.loads(stored[-1]) == truncated(huge)
    assert orjson.loads(lone_raw.value) == truncated(orjson.loads(lone))
    dlq = read_topic(s.kafka_bootstrap, s.topic(config.DEADLETTER))
    reasons = sorted(orjson.loads(r.value)["reason"] for r in dlq)
    assert reasons.count(split.TRUNCATED) == 3 and len(reasons) == 5  # (huge + invalid) x 2 attempts + lone

    # the worker stores each good event once, across the retry, and skips the invalid one
    w = T.start_worker(s, "split")
    try:
        batches = T.decode_all("event_batch", T.read_all(s, config.EVENTS, idle=3.0, timeout=120))
    finally:
        T.stop_worker(w)
    events = [e for b in batches for e in b["events"]]
    want = sorted([it["auditID"] for i, it in enumerate(items) if i != 7] + [event(901)["auditID"]])
    assert sorted(e["auditid"] for e in events) == want and len(events) == 401
    cut = [e for e in events if e["auditid"] in (huge["auditID"], event(901)["auditID"])]
    assert [(e["request_object"], e["annotations"][oversize.ANNOTATION_TRUNCATED]) for e in cut] == [("", "true")] * 2


def reply_records(raws: list) -> int:
    """Records per attempt: the batch ids of one attempt share their prefix."""
    prefixes = {str(dict(r.headers)["kaudit-batch-id"]).split(".")[0] for r in raws}
    assert len(prefixes) == 2
    return len(raws) // 2
