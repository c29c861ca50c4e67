"""Kubernetes 1.35+ impersonation in `rbac explain/suggest`: a denied impersonation is a check on the
impersonated identity (impersonate:<mode>) or on the request under a mode (impersonate-on:<mode>:<verb>), read
from the Forbidden message; the suggestion allows exactly those checks and not the plain request. Hand-made
events, shaped like k8s.io/apiserver's (pkg/endpoints/handlers/responsewriters/errors.go,
pkg/endpoints/filters/impersonation/mode.go) and stored in a real chDB warehouse."""

from __future__ import annotations

import uuid

import yaml

from pipeline.models.normalize import normalize_event
from pipeline.rbac import report
from pipeline.rbac.denials import Denial, forbidden_attributes
from pipeline.rbac.suggest import suggest, to_yaml
from pipeline.warehouse.reader import Warehouse
from pipeline.web.sampledata import insert_events
from pipeline.web.timerange import TimeRange
from tests.test_rbac_suggest import allows, grants


def denied(message: str, verb: str = "list", resource: str = "pods", namespace: str = "default", **over) -> dict:
    ev = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": str(uuid.uuid4()),
        "stage": "ResponseComplete", "requestURI": f"/api/v1/namespaces/{namespace}/{resource}", "verb": verb,
        "user": {"username": "alice", "groups": ["system:authenticated"]}, "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": resource, "namespace": namespace, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "status": "Failure", "message": message, "reason": "Forbidden", "code": 403},
        "requestReceivedTimestamp": "2026-11-30T10:00:00.000000Z", "stageTimestamp": "2026-11-30T10:00:00.001000Z",
    }  # fmt: skip
    ev.update(over)
    return ev


EVENTS = [
    # the impersonate:<mode> check on the identity (constrained impersonation, user-info mode), two users
    denied('users.authentication.k8s.io "bob" is forbidden: User "alice" cannot impersonate:user-info resource "users" in API group "authentication.k8s.io" at the cluster scope'),
    denied('users.authentication.k8s.io "carol" is forbidden: User "alice" cannot impersonate:user-info resource "users" in API group "authentication.k8s.io" at the cluster scope'),
    # the impersonate-on:<mode>:<verb> check on the request itself
    denied('pods is forbidden: User "alice" cannot impersonate-on:user-info:list resource "pods" in API group "" in the namespace "default"'),
    denied('deployments.apps "web" is forbidden: User "alice" cannot impersonate-on:serviceaccount:get resource "deployments" in API group "apps" in the namespace "shop"',
           verb="get", resource="deployments", namespace="shop"),
    # a service account identity in its namespace
    denied('serviceaccounts.authentication.k8s.io "builder" is forbidden: User "alice" cannot impersonate:serviceaccount resource "serviceaccounts" in API group "authentication.k8s.io" in the namespace "ci"'),
    # legacy impersonation of a group
    denied('groups "devs" is forbidden: User "alice" cannot impersonate resource "groups" in API group "" at the cluster scope'),
    # an ordinary denial, with an empty authorization reason annotation (seen on some servers)
    denied('secrets is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "default"',
           resource="secrets", annotations={"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}),
]


def test_forbidden_message_attributes():
    a = forbidden_attributes('pods "p" is forbidden: User "x\\" y" cannot impersonate-on:user-info:get resource "pods/exec" in API group "" in the namespace "d": reason')
    assert a == {"verb": "impersonate-on:user-info:get", "resource": "pods", "subresource": "exec", "apigroup": "",
                 "namespace": "d", "name": "p", "path": ""}  # fmt: skip
    assert forbidden_attributes('forbidden: User "u" cannot get path "/metrics"')["path"] == "/metrics"
    assert forbidden_attributes("Unauthorized") is None
    assert normalize_event(EVENTS[2], "c")["authorization_verb"] == "impersonate-on:user-info:list"
    assert normalize_event(EVENTS[6], "c")["authorization_verb"] == "list"


def test_suggest_allows_exactly_the_denied_impersonation_checks(warehouse):
    client, s, db = warehouse
    rows = []
    for i, ev in enumerate(EVENTS):
        rec = normalize_event(ev, "prod")
        rec["source_id"] = f"t:{i}"
        rows.append(rec)
    insert_events(client, rows)
    wh = Warehouse(s, max_workers=1, database=db)
    try:
        denials = report.load_denials(wh, "alice", TimeRange(0, 2**62, "all time"), [])
    finally:
        wh.close()
    want = {
        Denial("impersonate:user-info", "authentication.k8s.io", "users", name="bob"),
        Denial("impersonate:user-info", "authentication.k8s.io", "users", name="carol"),
        Denial("impersonate-on:user-info:list", "", "pods", namespace="default"),
        Denial("impersonate-on:serviceaccount:get", "apps", "deployments", namespace="shop", name="web"),
        Denial("impersonate:serviceaccount", "authentication.k8s.io", "serviceaccounts", namespace="ci", name="builder"),
        Denial("impersonate", "", "groups", name="devs"), Denial("list", "", "secrets", namespace="default"),
    }  # fmt: skip
    got = {Denial(d.verb, d.apigroup, d.resource, d.subresource, d.namespace, d.name, d.path) for d in denials}
    assert got == want
    objs = suggest(denials, "alice")
    assert [o for o in yaml.safe_load_all(to_yaml(objs)) if o] == objs  # valid multi-document YAML
    for d in want:
        assert allows(objs, "alice", d), d
    # nothing more: the plain requests behind the impersonations are not granted
    assert not allows(objs, "alice", Denial("list", "", "pods", namespace="default"))
    assert not allows(objs, "alice", Denial("impersonate:user-info", "authentication.k8s.io", "users", name="root"))
    assert {g[3] for g in grants(objs)} == {d.verb for d in want}
    for o in objs:
        for r in o.get("rules", ()):
            assert r["verbs"] and r["apiGroups"] is not None and all(isinstance(v, str) and " " not in v for v in r["verbs"])
    # explain: the empty authorizer reason falls back to the status message
    groups = {g.resource: g for g in report.explain(denials)}
    assert groups["secrets"].reason.startswith("secrets is forbidden")
