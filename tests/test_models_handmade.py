"""Hand-made cases that no real sample shows: error codes, Panic, big objects, secrets, bad input."""

from __future__ import annotations

import gzip
import json

import orjson
import pytest

from pipeline.models.avro import codec
from pipeline.models.event import NormalizedEvent
from pipeline.models.normalize import TRUNCATED_MARK, NormalizeError, normalize_event
from pipeline.models.readers import ParseIssue, RawEvent, read_events

TS = {"requestReceivedTimestamp": "2025-03-01T10:00:00.123456Z", "stageTimestamp": "2025-03-01T10:00:00.223456Z"}


def ev(**kw):
    base = {"level": "Metadata", "auditID": "id-1", "stage": "ResponseComplete", "requestURI": "/x", "verb": "get",
            "user": {"username": "alice"}, **TS}  # fmt: skip
    base.update(kw)
    return base


def test_401_with_empty_user_at_response_started():
    rec = normalize_event(
        ev(stage="ResponseStarted", user={}, responseStatus={"metadata": {}, "status": "Failure",
           "message": "Authentication failed, attempted: bearer", "reason": "Unauthorized", "code": 401}),  # fmt: skip
        "c",
    )
    assert rec["username"] == "" and rec["responsestatus_code"] == 401 and rec["stage"] == "ResponseStarted"
    assert rec["responsestatus_reason"] == "Unauthorized"


def test_422_with_causes_429_and_panic_500():
    r422 = normalize_event(
        ev(verb="create", responseStatus={"code": 422, "reason": "Invalid", "status": "Failure",
           "details": {"causes": [{"reason": "FieldValueRequired", "field": "spec.containers"}]}}),  # fmt: skip
        "c",
    )
    assert r422["responsestatus_code"] == 422 and r422["responsestatus_reason"] == "Invalid"
    assert normalize_event(ev(responseStatus={"code": 429, "reason": "TooManyRequests"}), "c")["responsestatus_code"] == 429
    panic = normalize_event(
        ev(stage="Panic", responseStatus={"code": 500, "status": "Failure", "reason": "InternalError",
           "message": "APIServer panic'd: boom"}),  # fmt: skip
        "c",
    )
    assert panic["stage"] == "Panic" and panic["responsestatus_code"] == 500
    assert panic["responsestatus_message"] == "APIServer panic'd: boom"


def test_5_mib_request_object_is_cut_and_flagged():
    big = {"kind": "ConfigMap", "data": {"blob": "x" * (5 * 1024 * 1024)}}
    rec = normalize_event(ev(level="Request", verb="create", requestObject=big), "c", max_object_bytes=256 * 1024)
    assert rec["objects_truncated"] is True
    assert len(rec["request_object"]) == 256 * 1024 + len(TRUNCATED_MARK)
    small = normalize_event(ev(level="Request", requestObject={"a": 1}), "c")
    assert small["objects_truncated"] is False and json.loads(small["request_object"]) == {"a": 1}


def test_secret_values_are_redacted_by_default_and_kept_when_asked():
    secret = {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "db"},
              "data": {"password": "aHVudGVyMg=="}, "stringData": {"token": "s3cr3t"}}  # fmt: skip
    e = ev(level="RequestResponse", verb="create", objectRef={"resource": "secrets", "namespace": "a", "name": "db"},
           requestObject=json.loads(json.dumps(secret)), responseObject={"kind": "SecretList", "items": [json.loads(json.dumps(secret))]})  # fmt: skip
    rec = normalize_event(json.loads(json.dumps(e)), "c")
    assert "aHVudGVyMg==" not in rec["request_object"] and "s3cr3t" not in rec["request_object"]
    assert "aHVudGVyMg==" not in rec["response_object"]
    assert json.loads(rec["request_object"])["data"]["password"].startswith("sha256:")
    assert json.loads(rec["request_object"])["metadata"]["name"] == "db"
    clear = normalize_event(json.loads(json.dumps(e)), "c", redact=False)
    assert "aHVudGVyMg==" in clear["request_object"]


def test_non_ascii_names_and_unknown_fields_are_kept():
    rec = normalize_event(
        ev(objectRef={"resource": "configmaps", "name": "données-日本"}, authenticationMetadata={"x": 1}, newField=[1]),
        "c",
    )
    assert rec["objectref_name"] == "données-日本"
    assert json.loads(rec["extra"]) == {"authenticationMetadata": {"x": 1}, "newField": [1]}


def test_missing_optional_fields_and_json_patch_array():
    rec = normalize_event(
        {"auditID": "p", "stage": "ResponseComplete", "verb": "patch", "stageTimestamp": TS["stageTimestamp"],
         "requestObject": [{"op": "replace", "path": "/spec/replicas", "value": 3}]},  # fmt: skip
        "c",
    )
    assert rec["request_received_ts"] == rec["stage_ts"]
    assert json.loads(rec["request_object"])[0]["op"] == "replace"
    assert rec["username"] == "" and rec["sourceips"] == [] and rec["level"] == ""
    NormalizedEvent(**rec)


def test_v1alpha1_group_version_is_split():
    rec = normalize_event(ev(objectRef={"resource": "deployments", "apiVersion": "apps/v1beta1"}), "c")
    assert rec["objectref_apigroup"] == "apps" and rec["objectref_apiversion"] == "v1beta1"


@pytest.mark.parametrize(
    "bad,reason",
    [
        ({"stage": "ResponseComplete", **TS}, "missing auditID"),
        ({"auditID": "a", "stage": "Weird", **TS}, "unknown stage"),
        ({"auditID": "a", "stage": "ResponseComplete"}, "no timestamp"),
        ({"auditID": "a", "stage": "ResponseComplete", "stageTimestamp": "yesterday"}, "not a timestamp"),
        ("just a string", "not an object"),
    ],
)
def test_invalid_events_raise_clear_errors(bad, reason):
    with pytest.raises(NormalizeError, match=reason):
        normalize_event(bad, "c")


def test_garbage_and_truncated_lines_are_reported_and_the_rest_continue():
    good = orjson.dumps(ev(auditID="g1")).decode()
    good2 = orjson.dumps(ev(auditID="g2")).decode()
    text = "\n".join([good, "garbage here", good2[: len(good2) // 2], good2, "", "42"]) + "\n"
    items = list(read_events(text.encode()))
    events = [i for i in items if isinstance(i, RawEvent)]
    issues = [i for i in items if isinstance(i, ParseIssue)]
    assert [e.event["auditID"] for e in events] == ["g1", "g2"]
    assert [i.line for i in issues] == [2, 3, 6]
    assert "invalid JSON" in issues[0].reason


def test_gzip_and_bom_and_concatenated_pretty_documents():
    docs = "\ufeff" + json.dumps(ev(auditID="a"), indent=2) + "\n" + json.dumps(ev(auditID="b"), indent=2) + "\n"
    items = list(read_events(gzip.compress(docs.encode())))
    assert [i.event["auditID"] for i in items] == ["a", "b"]
    assert items[1].line > 2


def test_eks_cloudwatch_shapes():
    inner = orjson.dumps(ev(auditID="eks1")).decode()
    export_line = orjson.dumps({"timestamp": 1, "message": inner, "logStreamName": "kube-apiserver-audit-1"})
    payload = orjson.dumps({"messageType": "DATA_MESSAGE", "logGroup": "/aws/eks/x/cluster",
                            "logEvents": [{"id": "1", "timestamp": 1, "message": inner}]})  # fmt: skip
    ids = [i.event["auditID"] for i in read_events(export_line + b"\n" + payload + b"\n")]
    assert ids == ["eks1", "eks1"]


def test_aks_properties_log_as_object_and_non_audit_categories():
    rec_obj = {"category": "kube-audit", "properties": {"log": ev(auditID="aks-obj")}}
    klog = {"category": "kube-apiserver", "properties": {"log": "I0101 some klog text"}}
    items = list(read_events(orjson.dumps({"records": [rec_obj, klog]})))
    assert [i.event["auditID"] for i in items if isinstance(i, RawEvent)] == ["aks-obj"]
    assert not [i for i in items if isinstance(i, ParseIssue)]  # klog lines are not audit events: skipped


def test_avro_round_trip_is_lossless_for_handmade_records():
    recs = [
        normalize_event(ev(auditID="r1", objectRef={"resource": "pods", "name": "é"}, annotations={"k": "v"}), "c"),
        normalize_event(ev(auditID="r2", stage="Panic", responseStatus={"code": 500}, newField=True), "c"),
    ]
    for r in recs:
        r["source_id"] = "0:7"  # as the worker writes them
    c = codec("event_batch")
    batch = {"source_id": "0:7", "cluster": "c", "received_at": 1, "events": recs, "dropped_keys": []}
    assert c.decode(c.encode(batch), c.fp) == batch
