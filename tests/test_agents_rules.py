"""Alert rules without Kafka: every default rule's inline examples, the Falco sample files (expected table),
condition operators, and clear errors for bad rule files."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from pipeline.agents import conditions as C
from pipeline.agents.conditions import EventView, compile_condition
from pipeline.agents.processor import Processor
from pipeline.agents.rules import RuleError, RuleSet, example_event, example_runs, load_rule_file, load_rules
from pipeline.agents.state import PartitionState
from pipeline.config import Settings
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import RawEvent, read_events
from tests.conftest import SAMPLES

RULES = load_rules(examples=True)  # caller lists with their example networks (the shipped files are empty)
BY_ID = {r.id: r for r in RULES}


def fired(rule_ids_events: list[dict], rules: list | None = None, history: list[dict] | None = None) -> Counter:
    """Run events (raw dicts) through a fresh processor as one record, after ``history`` as an earlier record;
    Counter of rule ids alerted by the events."""
    import orjson

    proc = Processor(Settings(), RuleSet(rules if rules is not None else RULES))
    st = PartitionState(0, 900)
    if history:
        body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": history})
        assert proc.process(st, 0, b"c1", body, []).n_bad == 0
    body = orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": rule_ids_events})
    out = proc.process(st, 1, b"c1", body, [])
    assert out.n_bad == 0, out.deadletters
    return Counter(a.record["rule_id"] for a in out.alerts)


def _examples(kind: str) -> list[tuple[str, int, dict]]:
    return [(r.id, i, ex) for r in RULES for i, ex in enumerate(r.examples.get(kind, []))]


def test_every_default_rule_has_examples_both_ways():
    missing = [r.id for r in RULES if not r.examples.get("fire") or not r.examples.get("quiet")]
    assert missing == []
    assert len(RULES) >= 45


@pytest.mark.parametrize("rule_id,i,example", _examples("fire"), ids=lambda x: str(x) if not isinstance(x, dict) else "")
def test_rule_fires_on_its_examples(rule_id: str, i: int, example: dict):
    rule = dataclasses.replace(BY_ID[rule_id], enabled=True)
    history, events = example_runs(rule, example)
    assert fired(events, [rule], history)[rule_id] == 1
    if rule.threshold:  # one event short of the threshold stays quiet
        assert fired(events[:-1], [rule], history)[rule_id] == 0


@pytest.mark.parametrize("rule_id,i,example", _examples("quiet"), ids=lambda x: str(x) if not isinstance(x, dict) else "")
def test_rule_quiet_on_its_examples(rule_id: str, i: int, example: dict):
    rule = dataclasses.replace(BY_ID[rule_id], enabled=True)
    history, events = example_runs(rule, example)
    assert fired(events, [rule], history)[rule_id] == 0


# What the default rules must raise on each Falco sample file (each file sent as its own cluster).
# Files not listed must raise nothing. Counts are alerts (create_configmap_sensitive_values has 6 events).
FALCO_EXPECTED: dict[str, dict[str, int]] = {
    "anonymous_creates_namespace_foo": {"anonymous-allowed": 1, "namespace-created": 1},
    "attach_cluster_admin_role": {"cluster-admin-binding": 1, "rbac-changed": 1},
    "attach_pod": {"pod-exec": 1},
    "create_cluster_role_pod_exec": {"role-pod-exec": 1, "rbac-changed": 1},
    "create_cluster_role_wildcard_resources": {"role-wildcard": 1, "rbac-changed": 1},
    "create_cluster_role_wildcard_verbs": {"role-wildcard": 1, "rbac-changed": 1},
    "create_cluster_role_write_privileges": {"role-write-verbs": 1, "rbac-changed": 1},
    "create_clusterrole": {"rbac-changed": 1},
    "create_clusterrolebinding": {"rbac-changed": 1},
    "create_configmap_sensitive_values": {"configmap-credentials": 6},
    "create_kube_system_secret": {"kube-system-token-created": 1, "secret-changed": 1},
    "create_nginx_pod_hostnetwork": {"host-network-pod": 1},
    "create_nginx_pod_no_secctx_1st_container_privileged_2nd_container": {"privileged-pod": 1},
    "create_nginx_pod_privileged": {"privileged-pod": 1},
    "create_nginx_pod_privileged_2nd_container": {"privileged-pod": 1},
    "create_nginx_pod_sensitive_mount": {"sensitive-hostpath-pod": 1, "hostpath-pod": 1},
    "create_nginx_pod_sensitive_mount_2nd_container": {"sensitive-hostpath-pod": 1, "hostpath-pod": 1},
    "create_nginx_service_nodeport": {"nodeport-service": 1},
    "create_pod_kube_public_namespace": {"pod-in-kube-namespace": 1},
    "create_pod_kube_system_namespace": {"pod-in-kube-namespace": 1},
    "create_secret": {"secret-changed": 1},
    "create_serviceaccount_kube_public_namespace": {"sa-created-kube-namespace": 1},
    "create_serviceaccount_kube_system_namespace": {"sa-created-kube-namespace": 1},
    "delete_cluster_role_kube_aggregator": {"risky-verb": 1, "rbac-changed": 1, "system-role-modified": 1},
    "delete_clusterrole": {"risky-verb": 1, "rbac-changed": 1},
    "delete_clusterrolebinding": {"risky-verb": 1, "rbac-changed": 1},
    "delete_configmap": {"risky-verb": 1},
    "delete_deployment": {"risky-verb": 1, "deployment-deleted": 1},
    "delete_namespace_foo": {"risky-verb": 1, "namespace-deleted": 1},
    "delete_secret": {"risky-verb": 1, "secret-changed": 1},
    "delete_service": {"risky-verb": 1},
    "delete_serviceaccount": {"risky-verb": 1},
    "exec_pod": {"pod-exec": 1},
    "minikube_creates_namespace_foo": {"namespace-created": 1},
    "modify_cluster_role_node_problem_detector": {"risky-verb": 1, "rbac-changed": 1, "system-role-modified": 1},
    "some-user_creates_namespace_foo": {"namespace-created": 1},
}
# Benign twins that must stay completely quiet.
FALCO_QUIET = [
    "create_configmap",
    "create_configmap_no_sensitive_values",
    "create_deployment",
    "create_nginx_pod_nohostnetwork",
    "create_nginx_pod_unprivileged",
    "create_nginx_pod_unsensitive_mount",
    "create_nginx_service_nonodeport",
    "create_service",
    "create_service_account_token_secret",
    "create_serviceaccount",
]
FALCO_FILES = sorted((SAMPLES / "falco").glob("*.json"))


def test_falco_table_names_every_file():
    assert sorted(FALCO_EXPECTED) + FALCO_QUIET and {p.stem for p in FALCO_FILES} == set(FALCO_EXPECTED) | set(FALCO_QUIET)


@pytest.mark.parametrize("path", FALCO_FILES, ids=lambda p: p.stem)
def test_falco_sample_fires_expected_rules(path: Path):
    proc = Processor(Settings(), RuleSet(RULES))
    out = proc.process(PartitionState(0, 900), 0, path.stem.encode(), path.read_bytes(), [])
    assert out.n_bad == 0
    got = dict(Counter(a.record["rule_id"] for a in out.alerts))
    assert got == FALCO_EXPECTED.get(path.stem, {})


def test_alert_fields_and_deterministic_id():
    path = SAMPLES / "falco" / "delete_namespace_foo.json"
    proc = Processor(Settings(), RuleSet(RULES))
    a1 = proc.process(PartitionState(2, 900), 7, b"prod", path.read_bytes(), []).alerts
    a2 = proc.process(PartitionState(2, 900), 7, b"prod", path.read_bytes(), []).alerts
    assert [a.alert_id for a in a1] == [a.alert_id for a in a2]
    rec = next(a.record for a in a1 if a.record["rule_id"] == "namespace-deleted")
    assert rec["cluster"] == "prod" and rec["verb"] == "delete" and rec["objectref_resource"] == "namespaces"
    assert rec["objectref_name"] == "foo" and rec["username"] == "minikube-user" and rec["responsestatus_code"] == 200
    assert rec["decision"] == "allow" and rec["source_id"] == "2:7" and rec["severity"] == "medium"
    import hashlib

    assert rec["alert_id"] == hashlib.sha1(f"namespace-deleted|prod|{rec['auditid']}".encode()).hexdigest()
    avro, js = proc.encode_alert(a1[0])
    from pipeline.models.avro import codec

    assert codec("alert").decode(avro) == a1[0].record
    assert b'"rule_id"' in js


# ---------------------------------------------------------------------------------------------- conditions
def view(**partial) -> EventView:
    raw = example_event(partial)
    return EventView(normalize_event(raw, "c"), raw)


def test_condition_operators():
    v = view(
        verb="create",
        user={"username": "bob", "groups": ["dev", "system:authenticated"]},
        sourceIPs=["203.0.113.9", "10.0.0.1"],
        requestURI="/api/v1/namespaces/a/pods/p/exec?command=sh&command=-c&command=id",
        responseStatus={"code": 403},
        requestObject={"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}]}, {"name": "b"}]}},
    )
    ok = {
        "verb": "create",
        "usergroups": "dev",
        "responsestatus_code": {"in": [401, 403], "gte": 400, "lt": 404},
        "username": {"startswith": ["al", "bo"], "not_contains": "x"},
        "command": "sh -c id",
        "sourceip": {"in_cidr": ["10.0.0.0/8"]},  # the peer the API server saw (the last), not X-Forwarded-For
        "sourceips": {"in_cidr": ["203.0.113.0/24"]},
        "request_object.spec.containers[*].name": "b",
        "request_object.spec.containers.ports.containerPort": 80,
        "request_object.spec.containers[1].name": "b",
        "request_object.spec.hostNetwork": {"exists": False},
        "annotations.authorization.k8s.io/decision": "allow",
        "request_path": {"regex": "^/api/v1/namespaces/[^/]+/pods"},
        "not": {"verb": "delete"},
        "any": [{"verb": "get"}, {"objectref_resource": "pods"}],
    }
    for field, test in ok.items():
        assert compile_condition({field: test}, "t")(v), field
    bad = {
        "verb": {"in": ["get", "list"]},
        "usergroups": {"not_in": ["dev"]},
        "sourceip": {"in_cidr": ["203.0.113.0/24"]},  # only in the client's own X-Forwarded-For header
        "request_object.spec.containers[*].name": "c",
        "request_object.spec.containers[0].name": "b",
        "objectref_subresource": {"exists": True},
        "responsestatus_code": "200",
    }
    for field, test in bad.items():
        assert not compile_condition({field: test}, "t")(v), field


def test_request_object_parsed_from_text_when_raw_missing():
    raw = example_event({"verb": "create", "requestObject": {"spec": {"hostPID": True}}})
    ev = normalize_event(raw, "c")
    assert compile_condition({"request_object.spec.hostPID": True}, "t")(EventView(ev))


def test_pod_spec_is_the_spec_each_kind_keeps():
    spec = {"hostPID": True, "containers": [{"name": "a"}]}
    wrap = {"pods": {"spec": spec}, "deployments": {"spec": {"template": {"spec": spec}}},
            "replicationcontrollers": {"spec": {"template": {"spec": spec}}},
            "cronjobs": {"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}},
            "podtemplates": {"template": {"spec": spec}}}  # fmt: skip
    test = compile_condition({"pod_spec.hostPID": True, "pod_spec.containers[*].name": "a"}, "t")
    for resource, obj in wrap.items():
        assert test(view(verb="create", objectRef={"resource": resource, "namespace": "d"}, requestObject=obj)), resource
    # the same shapes under the wrong kind, or a kind that makes no pods: no pod spec
    for resource, obj in [("pods", wrap["deployments"]), ("deployments", wrap["pods"]), ("configmaps", wrap["pods"]),
                          ("cronjobs", wrap["deployments"])]:  # fmt: skip
        assert not test(view(verb="create", objectRef={"resource": resource, "namespace": "d"}, requestObject=obj)), resource
    assert not compile_condition({"pod_spec": {"exists": True}}, "t")(view(verb="create", objectRef={"resource": "pods"}))


def test_json_patch_is_read_as_the_object_it_writes():
    ops = [{"op": "add", "path": "/spec/template/spec/containers/1/securityContext", "value": {"privileged": True}},
           {"op": "replace", "path": "/spec/template/spec/hostPID", "value": True},
           {"op": "add", "path": "/spec/template/spec/volumes/-", "value": {"name": "v", "hostPath": {"path": "/"}}},
           {"op": "add", "path": "/metadata/annotations/a~1b~0c", "value": "x"},
           {"op": "remove", "path": "/spec/template/spec/hostNetwork"},
           {"op": "copy", "from": "/a", "path": "/spec/template/spec/hostIPC"},
           {"op": "test", "path": "/spec/template/spec/hostUsers", "value": False}]  # fmt: skip
    assert C.json_patch_view(ops) == {
        "spec": {"template": {"spec": {"containers": [{"securityContext": {"privileged": True}}], "hostPID": True,
                                       "volumes": [{"name": "v", "hostPath": {"path": "/"}}]}}},
        "metadata": {"annotations": {"a/b~c": "x"}},
    }  # fmt: skip
    assert C.json_patch_view([{"op": "add", "path": "", "value": {"kind": "Pod"}}]) == {"kind": "Pod"}
    for not_a_patch in ([], [1, 2], [{"op": "add"}], ["x"]):
        assert C.json_patch_view(not_a_patch) == not_a_patch
    # through an EventView: parsed from the stored text (compiled path) and from the raw event (Python path)
    raw = example_event({"verb": "patch", "objectRef": {"resource": "deployments", "namespace": "d", "name": "w"},
                         "requestObject": ops})  # fmt: skip
    ev = normalize_event(raw, "c")
    for v in (EventView(ev), EventView(ev, raw)):
        assert compile_condition({"pod_spec.hostPID": True, "pod_spec.containers[*].securityContext.privileged": True,
                                  "request_object.spec.template.spec.volumes[*].hostPath.path": "/"}, "t")(v)  # fmt: skip
    # only a patch is read that way: a list-valued object of another verb stays a list
    raw["verb"] = "create"
    assert not compile_condition({"request_object.spec.template.spec.hostPID": True}, "t")(EventView(normalize_event(raw, "c"), raw))


def test_json_patch_copy_and_move_follow_what_the_patch_wrote_and_name_what_it_did_not():
    priv = "/spec/template/spec/containers/0/securityContext/privileged"
    # the source is in the patch: followed (copy keeps it, move takes it away), nothing unseen
    ops = [{"op": "add", "path": "/spec/template/spec/hostPID", "value": True},
           {"op": "copy", "from": "/spec/template/spec/hostPID", "path": priv},
           {"op": "add", "path": "/metadata/annotations/img", "value": "evil.example/x"},
           {"op": "move", "from": "/metadata/annotations/img", "path": "/spec/template/spec/containers/0/image"}]  # fmt: skip
    view_, unseen = C._apply_patch(ops)
    assert unseen == []
    assert view_ == {"spec": {"template": {"spec": {"hostPID": True, "containers": [
        {"securityContext": {"privileged": True}, "image": "evil.example/x"}]}}}, "metadata": {"annotations": {}}}  # fmt: skip
    # the source is the stored object (or only partly written by the patch): its target is unseen
    ops = [{"op": "copy", "from": "/spec/template/spec/enableServiceLinks", "path": priv},
           {"op": "add", "path": "/spec/template/spec/containers/1/name", "value": "b"},
           {"op": "move", "from": "/spec/template/spec/containers/1", "path": "/spec/template/spec/initContainers/0"},
           {"op": "copy", "from": "", "path": "/x"}]  # fmt: skip
    view_, unseen = C._apply_patch(ops)
    assert unseen == [priv, "/spec/template/spec/initContainers/0", "/x"]
    assert view_ == {"spec": {"template": {"spec": {"containers": {}, "initContainers": [{"name": "b"}]}}}}
    # as rules read it, from the stored text and from the raw event; a merge patch has no such paths
    for request, want in ((ops, True), ({"spec": {"replicas": 1}}, False), (ops[1:2], False)):
        raw = example_event({"verb": "patch", "objectRef": {"resource": "deployments", "namespace": "d", "name": "w"},
                             "requestObject": request})  # fmt: skip
        ev = normalize_event(raw, "c")
        for v in (EventView(ev), EventView(ev, raw)):
            assert compile_condition({"patch_unseen_paths": {"exists": True}}, "t")(v) is want, request
    hit = compile_condition({"patch_unseen_paths": {"startswith": "/spec/template/spec/initContainers"}}, "t")
    assert hit(EventView(normalize_event(example_event({"verb": "patch", "requestObject": ops}), "c")))
    # inside a list the patch wrote whole, an element is known; past its end, or a path through a scalar, is not
    in_list = [{"op": "add", "path": "/spec/volumes", "value": [{"name": "a"}, {"hostPath": {"path": "/"}}]},
               {"op": "move", "from": "/spec/volumes/1/hostPath", "path": "/spec/x"},
               {"op": "copy", "from": "/spec/volumes/5", "path": "/spec/y"},
               {"op": "copy", "from": "/spec/volumes/0/name/z", "path": "/spec/z"}]  # fmt: skip
    assert C._apply_patch(in_list) == ({"spec": {"volumes": [{"name": "a"}, {}], "x": {"path": "/"}}}, ["/spec/y", "/spec/z"])


def test_path_operators_compare_paths_as_the_kernel_names_them():
    assert [C.normalize_path(p) for p in ["//etc/.", "/etc/", "/", "//", "/a//b/./c/", "rel/./x", ""]] == [
        "/etc", "/etc", "/", "/", "/a/b/c", "rel/x", ""]  # fmt: skip
    v = lambda p: view(verb="create", objectRef={"resource": "pods", "namespace": "d"},  # noqa: E731
                       requestObject={"spec": {"volumes": [{"name": "x", "emptyDir": {}}, {"name": "h", "hostPath": {"path": p}}]}})  # fmt: skip
    f = "pod_spec.volumes[*].hostPath.path"
    is_etc = compile_condition({f: {"path_in": ["/etc/"]}}, "t")
    under_k = compile_condition({f: {"path_under": ["/etc/kubernetes"]}}, "t")
    not_under = compile_condition({f: {"not_path_under": ["/etc/kubernetes", "/proc"]}}, "t")
    for p in ["/etc", "//etc", "/etc/.", "/./etc//", "/etc/"]:
        assert is_etc(v(p)) and not under_k(v(p)), p
    for p in ["/etc/kubernetes", "/etc/kubernetes/pki/ca.key", "//etc//kubernetes/./manifests/"]:
        assert under_k(v(p)) and not is_etc(v(p)) and not not_under(v(p)), p
    for p in ["/etc/kubernetesx", "/etc/ssl", "/etc/../etc", "etc"]:
        assert not under_k(v(p)) and not_under(v(p)), p
    assert not is_etc(view(verb="create", objectRef={"resource": "pods"}, requestObject={"spec": {"volumes": [{"hostPath": {"path": 7}}]}}))
    with pytest.raises(C.ConditionError, match="absolute paths"):
        compile_condition({f: {"path_under": ["etc"]}}, "t")


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "text,needle",
    [
        ("rules: [{id: x, title: T, match: {verb: {inn: [get]}}}]", "rule 'x'): field 'match.verb.inn': unknown operator 'inn'"),
        ("rules: [{id: x, title: T, match: {nosuch: 1}}]", "rule 'x'): field 'match.nosuch': unknown field 'nosuch'"),
        ("rules: [{id: x, title: T, severity: huge, match: {verb: get}}]", "field 'severity': 'huge' is not one of"),
        ("rules: [{id: x, match: {verb: get}}]", "rule 'x'): field 'title' is required"),
        ("rules: [{id: x, title: T, match: {verb: get}, threshold: {count: 0}}]", "field 'threshold.count'"),
        ("rules: [{id: x, title: T, match: {username: {regex: '('}}}]", "field 'match.username.regex': bad regex"),
        ("rules: [{id: x, title: T, match: {verb: get}, stages: [Done]}]", "field 'stages'"),
        ("rules: [{id: x, title: T, match: {verb: get}, colour: red}]", "unknown field(s) colour"),
        ("rules: [{id: X Y, title: T, match: {verb: get}}]", "field 'id'"),
        ("rules: {a: 1}", "needs a top-level 'rules:' list"),
        ("rules: [", "not valid YAML"),
    ],
)
def test_bad_rule_file_is_a_clear_error(tmp_path: Path, text: str, needle: str):
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    with pytest.raises(RuleError) as exc:
        load_rules(f)
    assert needle in str(exc.value)
    assert str(f) in str(exc.value)


def test_user_rules_add_replace_and_disable(tmp_path: Path):
    f = tmp_path / "rules.yaml"
    f.write_text(
        """
rules:
  - {id: secret-read, enabled: false}
  - id: risky-verb
    title: Deletes only
    severity: high
    match: {verb: delete}
  - id: team-x-touch
    title: Someone touched team-x
    match: {objectref_namespace: team-x}
"""
    )
    rules = {r.id: r for r in load_rules(f)}
    assert rules["secret-read"].enabled is False
    assert rules["risky-verb"].severity == "high"
    got = fired(
        [
            example_event({"verb": "patch", "objectRef": {"resource": "pods", "namespace": "team-x"}}, 1),
            example_event({"verb": "get", "objectRef": {"resource": "secrets", "namespace": "a", "name": "s"}}, 2),
        ],
        list(rules.values()),
    )
    assert got == Counter({"team-x-touch": 1})
    with pytest.raises(RuleError, match="no such rule"):
        f.write_text("rules: [{id: nope, enabled: false}]")
        load_rules(f)


def test_default_file_loads_alone():
    rules, disabled = load_rule_file(Path(__file__).resolve().parent.parent / "pipeline/agents/rules/default.yaml")
    assert not disabled and len({r.id for r in rules}) == len(rules)


def test_index_and_guard_memo_give_the_plain_answer():
    """One RuleSet sees every example event of every rule (and the Falco samples), shuffled, three times: its
    answers (index slots, memoized guards) must equal testing each rule's full condition on each event."""
    import random

    rules = load_rules()
    rs = RuleSet(rules)
    events = []
    for r in rules:
        for kind in ("fire", "quiet"):
            for i, ex in enumerate(r.examples.get(kind, [])):
                raw = example_event({k: v for k, v in ex.items() if k != "count"}, i)
                events.append(EventView(normalize_event(raw, "c"), raw))
    for path in sorted((SAMPLES / "falco").glob("*.json")):
        for it in read_events(path.read_bytes()):
            if isinstance(it, RawEvent):
                events.append(EventView(normalize_event(it.event, "c"), it.event))
    assert len(events) > 150
    rng = random.Random(7)
    fired = 0
    for _ in range(3):
        rng.shuffle(events)
        for v in events:
            want = sorted(r.id for r in rs.rules if v.ev["stage"] in r.stages and r.match(v))
            got = sorted(r.id for r in rs.matches(v))
            assert got == want, v.ev["auditid"]
            fired += len(got)
    assert fired > 100
    assert any(slot.memo for slot in rs._slots.values())  # the memo was used, not bypassed


def test_guard_rest_is_what_the_guard_leaves_to_test():
    """A rule's condition is its guard (memoized per user/verb/resource values) and the rest; an event whose
    guard holds is tested on the rest alone, so the rest must hold exactly the other parts."""
    from pipeline.agents.rules import make_guard

    match = {"verb": {"in": ["create", "update"]}, "objectref_resource": "pods", "pod_spec.hostPID": True}
    g = make_guard(match)
    assert g is not None and not g.complete and g.fields == ("objectref_resource", "verb")
    full = compile_condition(match, "t")

    def view(verb: str, host_pid: bool) -> EventView:
        raw = {"kind": "Event", "auditID": "g", "stage": "ResponseComplete", "verb": verb,
               "objectRef": {"resource": "pods", "namespace": "d"}, "requestReceivedTimestamp": "2026-11-30T10:00:00Z",
               "requestObject": {"spec": {"hostPID": host_pid, "containers": [{"name": "a"}]}}}  # fmt: skip
        return EventView(normalize_event(raw, "c"), raw)

    for verb in ("create", "get"):
        for pid in (True, False):
            v = view(verb, pid)
            assert g.rest(v) is pid  # the guard's parts are not in it: a get with hostPID passes the rest
            assert full(v) == (g.pred(v) and g.rest(v)) == (verb == "create" and pid)
    complete = make_guard({"verb": "delete", "objectref_resource": "pods"})
    assert complete is not None and complete.complete and complete.rest is None
