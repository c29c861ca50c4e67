"""`rbac suggest` never hands a requester more than it asked for by asking for '*', and names the grants that
lead further (pipeline/rbac/risk.py). The denials are hand-made in the shapes the API server records; the real
API server's own recording of such requests is checked in tests/test_kube_apiserver.py's wildcard test."""

from __future__ import annotations

import yaml

from pipeline.rbac import risk
from pipeline.rbac.denials import Denial
from pipeline.rbac.report import build
from pipeline.rbac.suggest import suggest
from pipeline.web.timerange import TimeRange

USER = "mallory"
TR = TimeRange(0, 10**16, "all time")


def rules_of(objects: list[dict]) -> list[dict]:
    return [r for o in objects if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]


def test_wildcards_are_never_granted() -> None:
    wild = [
        Denial("get", resource="*", namespace="default", requests=2),  # GET /api/v1/namespaces/default/*
        Denial("list", apigroup="*", resource="things", namespace="default"),  # /apis/*/v1/namespaces/default/things
        Denial("get", resource="pods", subresource="*", namespace="default", name="p"),  # pods/p/*
        Denial("get", path="/*"),  # nonResourceURLs: ["/*"] would be every URL
        Denial("get", path="/api*"),
        Denial("*", resource="pods", namespace="default"),
    ]
    plain = Denial("get", resource="pods", namespace="default", name="web-0", requests=3)
    objects = suggest([*wild, plain], USER)
    rules = rules_of(objects)
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "resourceNames": ["web-0"], "verbs": ["get"]}]
    assert not any("*" in v for r in rules for k in ("apiGroups", "resources", "verbs") for v in r[k])
    assert all(risk.wildcard_refusal(d) for d in wild) and risk.wildcard_refusal(plain) is None

    rep = build(USER, TR, [], [*wild, plain])
    assert len(rep["refused"]) == len(wild)
    assert rep["yaml"].count("# NOT GRANTED:") == len(wild)
    assert "allows exactly 3 denied request(s)" in rep["yaml"]
    docs = [d for d in yaml.safe_load_all(rep["yaml"]) if d]
    assert rules_of(docs) == rules
    # only wildcards: nothing to apply, and the report still says why
    rep = build(USER, TR, [], wild)
    assert rep["yaml"] == "" and len(rep["refused"]) == len(wild)


def test_risky_grants_are_named() -> None:
    denials = [
        Denial("get", resource="secrets", namespace="payments", name="db"),
        Denial("create", resource="pods", subresource="exec", namespace="payments", name="api-0"),
        Denial("create", resource="clusterrolebindings", apigroup="rbac.authorization.k8s.io"),
        Denial("impersonate", resource="groups", name="system:masters"),
        Denial("impersonate:user-info", resource="users", apigroup="authentication.k8s.io", name="bob"),
        Denial("create", resource="deployments", apigroup="apps", namespace="payments"),
        Denial("get", resource="nodes", subresource="proxy", name="n1"),
        Denial("create", resource="serviceaccounts", subresource="token", namespace="payments", name="ci"),
    ]
    warns = build(USER, TR, [], denials)["warnings"]
    joined = "\n".join(warns)
    for needle in ("get secrets (only db)", "create pods/exec", "create clusterrolebindings", "impersonate groups", "impersonate users (only bob)",
                   "create deployments", "get nodes/proxy", "create serviceaccounts/token"):
        assert needle in joined, (needle, warns)
    assert len(warns) == len(denials)
    assert build(USER, TR, [], denials)["yaml"].count("# WARNING:") == len(denials)
    harmless = [Denial("get", resource="configmaps", namespace="payments"), Denial("list", resource="pods",
                                                                                  namespace="payments")]
    assert build(USER, TR, [], harmless)["warnings"] == []
