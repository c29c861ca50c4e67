"""`rbac suggest --existing FILE`: only what the subject's current RBAC lacks. The matching follows the
Kubernetes RBAC authorizer (wildcards, */subresource, resourceNames, non-resource URL prefixes, RoleBinding
scope, User/Group/ServiceAccount subjects and the implicit service-account groups); the CLI runs on the real
403s of the audit2rbac samples. (--from-cluster against the real API server: tests/test_kube_impersonation.py.)"""

from __future__ import annotations

import subprocess
import sys

import yaml

from pipeline.rbac.denials import Denial
from pipeline.rbac.existing import Existing, RbacInputError, load_files, rule_allows
from tests.conftest import REPO, SAMPLES


def role(kind: str, name: str, rules: list, ns: str = "") -> dict:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta, "rules": rules}


def binding(kind: str, name: str, ref_kind: str, ref: str, subjects: list, ns: str = "") -> dict:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": ref}, "subjects": subjects}  # fmt: skip


def test_rule_matching_follows_the_rbac_authorizer():
    pods_exec = Denial("create", "", "pods", "exec", "a", "web")
    assert rule_allows({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}, pods_exec)
    assert rule_allows({"apiGroups": ["*"], "resources": ["*/exec"], "verbs": ["*"]}, pods_exec)
    assert not rule_allows({"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}, pods_exec)
    assert rule_allows({"apiGroups": [""], "resources": ["*"], "verbs": ["create"], "resourceNames": ["web"]}, pods_exec)
    assert not rule_allows({"apiGroups": [""], "resources": ["*"], "verbs": ["create"], "resourceNames": ["db"]}, pods_exec)
    assert not rule_allows({"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]}, pods_exec)
    assert not rule_allows({"resources": ["*"], "verbs": ["*"]}, pods_exec)  # no apiGroups: nothing
    metrics = Denial("get", path="/metrics/cadvisor")
    assert rule_allows({"nonResourceURLs": ["/metrics/*"], "verbs": ["get"]}, metrics)
    assert not rule_allows({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, metrics)
    imp = Denial("impersonate-on:user-info:list", "", "pods", namespace="d")
    assert rule_allows({"apiGroups": [""], "resources": ["pods"], "verbs": ["impersonate-on:user-info:list"]}, imp)
    assert not rule_allows({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}, imp)


def test_bindings_scope_and_subjects():
    ex = Existing.from_objects([
        {"kind": "List", "items": [
            role("Role", "r", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}], "a"),
            role("ClusterRole", "c", [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list"]},
                                      {"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]),
            binding("RoleBinding", "rb", "Role", "r", [{"kind": "ServiceAccount", "name": "app"}], "a"),
            binding("RoleBinding", "rb2", "ClusterRole", "c", [{"kind": "Group", "name": "devs"}], "b"),
            binding("ClusterRoleBinding", "crb", "ClusterRole", "c", [{"kind": "Group", "name": "system:serviceaccounts:ops"}]),
        ]},
    ])  # fmt: skip
    sa = "system:serviceaccount:a:app"
    assert ex.granted_by(sa, [], Denial("get", "", "secrets", namespace="a")) == "RoleBinding/a/rb"
    assert ex.granted_by(sa, [], Denial("get", "", "secrets", namespace="b")) is None  # other namespace
    assert ex.granted_by("bob", ["devs"], Denial("list", "", "pods", namespace="b")) == "RoleBinding/b/rb2"
    assert ex.granted_by("bob", ["devs"], Denial("list", "", "nodes")) is None  # a RoleBinding is not cluster-wide
    assert ex.granted_by("bob", ["devs"], Denial("get", path="/healthz")) is None  # nor grants non-resource URLs
    ops = "system:serviceaccount:ops:x"  # the implicit group system:serviceaccounts:ops
    assert ex.granted_by(ops, [], Denial("list", "", "nodes")) == "ClusterRoleBinding/crb"
    assert ex.granted_by(ops, [], Denial("get", path="/healthz")) == "ClusterRoleBinding/crb"


def test_bad_existing_files_are_clear_errors(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("kind: ConfigMap\nmetadata: {name: x}\n")
    for text, needle in (("kind: ConfigMap\n", "no Role"), ("a: [", "not YAML")):
        f.write_text(text)
        try:
            load_files([f])
        except RbacInputError as exc:
            assert needle in str(exc) and str(f) in str(exc)
        else:
            raise AssertionError(text)


def test_cli_suggests_only_what_is_missing(tmp_path):
    dsn = f"chdb://{tmp_path / 'chdb'}"
    load = (
        "from pathlib import Path; from pipeline.config import Settings; "
        "from pipeline.warehouse.client import open_client; from pipeline.warehouse.migrations import migrate; "
        "from pipeline.web.sampledata import sample_events, insert_events; "
        f"s = Settings(clickhouse_dsn={dsn!r}); c = open_client(s); migrate(c, s); "
        f"print(insert_events(c, [e for e in sample_events(Path({str(SAMPLES)!r})) if e['cluster'] == 'audit2rbac']))"
    )
    subprocess.run([sys.executable, "-c", load], cwd=REPO, capture_output=True, text=True, check=True)
    # alice (impersonated, group system:authenticated) was denied list on configmaps, pods and secrets in ns1;
    # since then she got pods through a RoleBinding and configmaps through a group ClusterRoleBinding
    existing = tmp_path / "rbac.yaml"
    existing.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        role("Role", "pods-reader", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}], "ns1"),
        binding("RoleBinding", "alice-pods", "Role", "pods-reader", [{"kind": "User", "name": "alice"}], "ns1"),
        role("ClusterRole", "cm", [{"apiGroups": ["*"], "resources": ["configmaps"], "verbs": ["*"]}]),
        binding("ClusterRoleBinding", "everyone-cm", "ClusterRole", "cm", [{"kind": "Group", "name": "system:authenticated"}]),
    ]}))  # fmt: skip
    kaudit = [sys.executable, "-m", "pipeline.cli", "rbac", "suggest", "--user", "alice", "--since", "all", "--clickhouse", dsn]
    out = subprocess.run([*kaudit, "--existing", str(existing)], cwd=REPO, capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["Role", "RoleBinding"]
    assert docs[0]["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]
    assert "RoleBinding/ns1/alice-pods" in out and "ClusterRoleBinding/everyone-cm" in out
    # everything granted: nothing to add
    existing.write_text(yaml.safe_dump(role("ClusterRole", "all", [{"apiGroups": [""], "resources": ["*"], "verbs": ["list"]}]))
                        + "---\n" + yaml.safe_dump(binding("ClusterRoleBinding", "a", "ClusterRole", "all", [{"kind": "User", "name": "alice"}])))  # fmt: skip
    out = subprocess.run([*kaudit, "--existing", str(existing)], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.startswith("# the 3 denied request(s) of alice") and "nothing to add" in out
    bad = subprocess.run([*kaudit, "--existing", str(tmp_path / "nope.yaml")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot read" in bad.stderr
