"""Every real sample event normalizes; exact counts per file; field values of each shape."""

from __future__ import annotations

import pytest

from pipeline.models.event import Event, NormalizedEvent
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import ParseIssue, RawEvent, read_events
from tests.conftest import SAMPLES, sample_files

EXPECTED = {
    "aks/eventhub-records.json": 22,
    "aks/sample_EventHubs_event.json": 1,
    "aks/sample_KubeAuditLog_event.json": 1,
    "audit2rbac/demo-k8s-1.8-v1beta1.log": 757,
    "audit2rbac/demo-relabelled-v1.log": 37,
    "openshift/audit_in-k8s-1.25.log": 100,
    "openshift/forward_to_syslog_test-lines.jsonl": 28,
    "openshift/log5607_sample.json": 1,
    "openshift/raw_audit_kubernetes.json": 1,
    "openshift/raw_audit_oauth-apiserver.json": 1,
    "openshift/raw_audit_openshift.json": 1,
    "falco/create_configmap_sensitive_values.json": 6,
}
FALCO_FILES = 46  # every other falco file holds exactly one event


def _events(rel: str) -> list[dict]:
    out = []
    for item in read_events((SAMPLES / rel).read_bytes()):
        assert not isinstance(item, ParseIssue), f"{rel}:{item.line}: {item.reason}"
        out.append(normalize_event(item.event, "c1"))
    return out


def test_every_sample_file_has_the_pinned_count():
    total = 0
    files = sample_files()
    assert len([f for f in files if f.parent.name == "falco"]) == FALCO_FILES
    for path in files:
        rel = f"{path.parent.name}/{path.name}"
        events = _events(rel)
        expected = EXPECTED.get(rel, 1 if path.parent.name == "falco" else None)
        assert expected is not None, f"unexpected sample file {rel}"
        assert len(events) == expected, rel
        for rec in events:
            NormalizedEvent(**rec)  # the shape is exactly the documented record
        total += len(events)
    assert total == 1001


def test_every_sample_event_validates_as_pydantic_event():
    n = 0
    for path in sample_files():
        for item in read_events(path.read_bytes()):
            assert isinstance(item, RawEvent)
            Event.model_validate(item.event)
            n += 1
    assert n == 1001


def test_v1beta1_2017_uses_second_timestamps_and_impersonation():
    ev = _events("audit2rbac/demo-k8s-1.8-v1beta1.log")[0]
    assert ev["auditid"] == "033d17af-082d-4b24-aa22-627752e83d71"
    assert ev["event_version"] == "audit.k8s.io/v1beta1"
    assert ev["request_received_ts"] == 1505159705_000000  # 2017-09-11T19:55:05Z
    assert ev["stage_ts"] == 1505159705_000000
    assert ev["verb"] == "list" and ev["objectref_resource"] == "pods" and ev["objectref_namespace"] == "default"
    assert ev["responsestatus_code"] == 403 and ev["responsestatus_reason"] == "Forbidden"
    assert ev["username"] == "system:admin" and ev["impersonated_username"] == "bob"
    assert ev["usergroups"] == ["system:masters", "system:authenticated"]
    assert ev["sourceips"] == ["::1"]


def test_v1_openshift_microsecond_timestamps_and_objects():
    events = _events("openshift/audit_in-k8s-1.25.log")
    first = events[0]
    assert first["auditid"] == "b6560098-0bbb-4593-ad6a-9c0022e9dc87"
    assert first["stage"] == "ResponseComplete" and first["level"] == "RequestResponse"
    assert first["request_received_ts"] % 1_000_000 != 0  # microseconds kept
    assert first["stage_ts"] >= first["request_received_ts"]
    assert any(e["response_object"].startswith("{") for e in events)
    assert {e["responsestatus_code"] for e in events} >= {200, 409}


def test_aks_eventhub_records_unwrap_string_logs():
    events = _events("aks/eventhub-records.json")
    assert events[0]["auditid"] == "55ffceaa-b7c3-478e-98c6-e509cd2f0dd7"
    assert events[0]["username"] == "system:serviceaccount:kube-system:resourcequota-controller"
    assert events[0]["decision"] == "allow"
    assert events[0]["decision_reason"].startswith("RBAC: allowed by ClusterRoleBinding")
    assert events[0]["request_received_ts"] == 1588695397_655912


def test_bom_pretty_printed_single_event():
    (ev,) = _events("aks/sample_KubeAuditLog_event.json")
    assert ev["auditid"] == "71749feb-8e92-43e6-a72f-af6171f811ee"
    assert ev["level"] == "RequestResponse"


def test_webhook_eventlist_items_without_kind():
    body = (
        b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
        b'{"level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/pods","verb":"list",'
        b'"user":{"username":"u"},"requestReceivedTimestamp":"2024-01-02T03:04:05.000001Z",'
        b'"stageTimestamp":"2024-01-02T03:04:05.000002Z","responseStatus":{"metadata":{},"code":200}},'
        b'{"level":"Metadata","auditID":"a2","stage":"ResponseComplete","requestURI":"/healthz","verb":"get",'
        b'"user":{},"requestReceivedTimestamp":"2024-01-02T03:04:05.5Z","stageTimestamp":"2024-01-02T03:04:06Z"}]}'
    )
    items = [i for i in read_events(body)]
    assert all(isinstance(i, RawEvent) for i in items)
    recs = [normalize_event(i.event, "prod") for i in items]
    assert [r["auditid"] for r in recs] == ["a1", "a2"]
    assert recs[0]["cluster"] == "prod" and recs[0]["stage_ts"] == 1704164645_000002
    assert recs[1]["objectref_resource"] == "" and recs[1]["responsestatus_code"] == 0
    assert recs[1]["request_received_ts"] == 1704164645_500000


@pytest.mark.parametrize("rel", ["falco/exec_pod.json", "falco/create_nginx_pod_privileged.json"])
def test_falco_events_have_request_objects(rel):
    (ev,) = _events(rel)
    assert ev["request_object"].startswith("{") or ev["objectref_subresource"] == "exec"
