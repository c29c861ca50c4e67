"""`rbac suggest`: the YAML parses, allows every denied request and grants nothing beyond them, checked by a
small RBAC authorizer written here (the Kubernetes rule-matching semantics), on hand-made denials and on the
real 403s of the audit2rbac samples loaded into the warehouse."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from itertools import product

import yaml

from pipeline.rbac.denials import Denial
from pipeline.rbac.suggest import suggest, to_yaml
from tests.conftest import REPO, SAMPLES
from tests.test_web_support import get, loaded, server  # noqa: F401 - fixtures

# ---------------------------------------------------------------------------------------------------------------
# a minimal RBAC authorizer (k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac semantics, no wildcards needed)


def _subject_matches(subject: dict, user: str) -> bool:
    if subject["kind"] == "User":
        return subject["name"] == user
    if subject["kind"] == "ServiceAccount":
        return user == f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
    return False


def _rules_for(objs: list[dict], user: str, namespace: str) -> list[dict]:
    """The rules that apply to a request of `user` in `namespace` ("" = cluster scope)."""
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs
             if o["kind"] in ("Role", "ClusterRole")}  # fmt: skip
    rules = []
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(_subject_matches(s, user) for s in b["subjects"]):
            continue
        bns = b["metadata"].get("namespace", "")
        if b["kind"] == "RoleBinding" and bns != namespace:
            continue
        ref = b["roleRef"]
        role = roles.get((ref["kind"], bns if ref["kind"] == "Role" else "", ref["name"]))
        assert role is not None, f"binding {b['metadata']['name']} refers to a missing {ref['kind']}"
        rules += role["rules"]
    return rules


def allows(objs: list[dict], user: str, d: Denial) -> bool:
    for r in _rules_for(objs, user, d.namespace):
        if d.verb not in r["verbs"]:
            continue
        if d.non_resource:
            if "nonResourceURLs" in r and d.path in r["nonResourceURLs"]:
                return True
            continue
        if "resources" not in r or d.apigroup not in r["apiGroups"] or d.rbac_resource not in r["resources"]:
            continue
        names = r.get("resourceNames")
        if not names or d.name in names:
            return True
    return False


def grants(objs: list[dict]) -> set[tuple]:
    """Everything the objects allow, as (scope, group, resource, verb, name|*) / (path, verb)."""
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objs
             if o["kind"] in ("Role", "ClusterRole")}  # fmt: skip
    out: set[tuple] = set()
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        scope = b["metadata"].get("namespace", "*")
        ref = b["roleRef"]
        role = roles[
            (ref["kind"], b["metadata"].get("namespace", "") if ref["kind"] == "Role" else "", ref["name"])
        ]
        for r in role["rules"]:
            for v in r["verbs"]:
                assert v != "*" and "*" not in r.get("resources", []) and "*" not in r.get("apiGroups", [])
            if "nonResourceURLs" in r:
                out |= {("url", p, v) for p, v in product(r["nonResourceURLs"], r["verbs"])}
                continue
            names = r.get("resourceNames") or ["*"]
            out |= set(product([scope], r["apiGroups"], r["resources"], r["verbs"], names))
    return out


UNNAMED = {"create", "list", "watch", "deletecollection"}


def assert_exact(objs: list[dict], user: str, denials: list[Denial]) -> None:
    # every denial is now allowed
    for d in denials:
        assert allows(objs, user, d), f"not covered: {d}"
    # and every grant is one some denial needed
    needed = set()
    for d in denials:
        if d.non_resource:
            needed.add(("url", d.path, d.verb))
            continue
        scope = d.namespace or "*"
        key = (scope, d.apigroup, d.rbac_resource, d.verb)
        same = [
            x
            for x in denials
            if not x.non_resource and ((x.namespace or "*"), x.apigroup, x.rbac_resource, x.verb) == key
        ]
        if d.verb in UNNAMED or not all(x.name for x in same):
            needed.add((*key, "*"))
        else:
            needed.add((*key, d.name))
    extra = grants(objs) - needed
    assert not extra, f"grants beyond the denials: {sorted(extra)}"
    # no duplicate objects
    keys = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys))


# ---------------------------------------------------------------------------------------------------------------


def roundtrip(objs: list[dict]) -> list[dict]:
    text = to_yaml(objs, "header line\nsecond line")
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert docs == objs
    for d in docs:
        assert d["apiVersion"] == "rbac.authorization.k8s.io/v1" and d["metadata"]["name"]
        assert "/" not in d["metadata"]["name"] and "%" not in d["metadata"]["name"]
    return docs


def test_handmade_denials_namespaces_subresources_names_urls():
    user = "system:serviceaccount:team-a:deployer"
    denials = [
        Denial("get", "", "secrets", namespace="team-a", name="db-password"),
        Denial("get", "", "secrets", namespace="team-a", name="api-key"),
        Denial("delete", "", "secrets", namespace="team-a", name="api-key"),
        Denial("create", "", "pods", "exec", namespace="team-a", name="web-1"),  # create: never by name
        Denial("get", "apps", "deployments", namespace="team-a", name="web"),
        Denial("list", "apps", "deployments", namespace="team-a"),
        Denial("patch", "apps", "deployments", "scale", namespace="team-b", name="api"),
        Denial("get", "", "configmaps", namespace="team-b", name="cfg"),
        Denial("get", "", "configmaps", namespace="team-b"),  # one without a name -> any name
        Denial("list", "", "nodes"),
        Denial("get", "", "namespaces", name="team-a"),
        Denial("list", "", "pods"),  # across all namespaces -> cluster role
        Denial("get", "", path="/healthz"),
        Denial("get", "", path="/metrics"),
        Denial("post", "", path="/logs"),
    ]
    objs = roundtrip(suggest(denials, user))
    assert_exact(objs, user, denials)
    kinds = Counter((o["kind"], o["metadata"].get("namespace", "")) for o in objs)
    assert kinds == Counter({("ClusterRole", ""): 1, ("ClusterRoleBinding", ""): 1, ("Role", "team-a"): 1,
                             ("RoleBinding", "team-a"): 1, ("Role", "team-b"): 1, ("RoleBinding", "team-b"): 1})  # fmt: skip
    binding = next(o for o in objs if o["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "deployer", "namespace": "team-a"}]
    role_a = next(o for o in objs if o["kind"] == "Role" and o["metadata"]["namespace"] == "team-a")
    assert {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]} in role_a["rules"]
    secret_rules = [r for r in role_a["rules"] if r.get("resources") == ["secrets"]]
    assert {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["api-key", "db-password"],
        "verbs": ["get"],
    } in secret_rules
    assert {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["api-key"],
        "verbs": ["delete"],
    } in secret_rules
    cluster = next(o for o in objs if o["kind"] == "ClusterRole")
    assert {"nonResourceURLs": ["/healthz", "/metrics"], "verbs": ["get"]} in cluster["rules"]
    assert {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["list"]} in cluster["rules"]


def test_a_plain_user_gets_a_user_subject_and_nothing_for_no_denials():
    objs = suggest([Denial("list", "", "pods", namespace="default")], "bob")
    assert objs[1]["subjects"] == [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "bob"}]
    assert suggest([], "bob") == [] and to_yaml([]) == ""


def _file_denials() -> dict[str, set[tuple]]:
    """Independent of the pipeline: 403s straight from the audit2rbac files, by effective user."""
    out: dict[str, set[tuple]] = {}
    for f in (SAMPLES / "audit2rbac").glob("*.log"):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            if (e.get("responseStatus") or {}).get("code") != 403:
                continue
            user = (e.get("impersonatedUser") or {}).get("username") or e["user"]["username"]
            ref = e.get("objectRef") or {}
            out.setdefault(user, set()).add(
                (
                    e["verb"],
                    ref.get("apiGroup", ""),
                    ref.get("resource", ""),
                    ref.get("subresource", ""),
                    ref.get("namespace", ""),
                    ref.get("name", ""),
                )  # fmt: skip
            )
    return out


def test_sample_403s_suggest_exact_rbac(loaded, server):  # noqa: F811
    expected = _file_denials()
    assert set(expected) == {"bob", "alice", "system:serviceaccount:ns1:sa1"}
    for user, shapes in expected.items():
        rep = get(server.url, "/api/rbac", user=user, since="all", cluster="audit2rbac")
        from pipeline.rbac.denials import denials_from_rows

        cols = ["verb", "apigroup", "resource", "subresource", "namespace", "name", "path", "requests", "first_us",
                "last_us", "reason", "message", "clusters"]  # fmt: skip
        rows = [[g["verb"], g["apigroup"], g["resource"], g["subresource"], g["namespace"], n, "", 1, 0, 0, "", "", []]
                for g in rep["groups"] for n in (g["names"] or [""])]  # fmt: skip
        got = {
            (d.verb, d.apigroup, d.resource, d.subresource, d.namespace, d.name)
            for d in denials_from_rows(cols, rows)
        }
        assert got == shapes, user
        objs = [d for d in yaml.safe_load_all(rep["yaml"]) if d]
        denials = [Denial(*s[:4], namespace=s[4], name=s[5]) for s in shapes]
        assert_exact(objs, user, denials)
        assert rep["requests"] == sum(g["requests"] for g in rep["groups"])
    sa = get(server.url, "/api/rbac", user="system:serviceaccount:ns1:sa1", since="all", format="yaml")
    docs = [d for d in yaml.safe_load_all(sa) if d]
    assert {"kind": "ServiceAccount", "name": "sa1", "namespace": "ns1"} in docs[1]["subjects"]
    text = get(server.url, "/api/rbac", user="bob", since="all", format="text")
    assert "4 denied request(s) of bob" in text and "cannot list pods" in text


def test_cli_explain_and_suggest_on_the_samples(tmp_path):
    """`kaudit rbac` as a user runs it, on its own chDB path (a separate process)."""
    dsn = f"chdb://{tmp_path / 'chdb'}"
    load = (
        "from pathlib import Path; from pipeline.config import Settings; "
        "from pipeline.warehouse.client import open_client; from pipeline.warehouse.migrations import migrate; "
        "from pipeline.web.sampledata import sample_events, insert_events; "
        f"s = Settings(clickhouse_dsn={dsn!r}); c = open_client(s); migrate(c, s); "
        f"print(insert_events(c, [e for e in sample_events(Path({str(SAMPLES)!r})) if e['cluster'] == 'audit2rbac']))"
    )
    out = subprocess.run([sys.executable, "-c", load], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "757"
    kaudit = [sys.executable, "-m", "pipeline.cli", "rbac"]
    ex = subprocess.run([*kaudit, "explain", "--user", "alice", "--since", "all", "--clickhouse", dsn],
                        cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    assert "3 denied request(s) of alice" in ex.stdout
    assert "secrets" in ex.stdout and "configmaps" in ex.stdout and "ns1" in ex.stdout
    target = tmp_path / "alice.yaml"
    subprocess.run([*kaudit, "suggest", "--user", "alice", "--since", "all", "--clickhouse", dsn, "-o", str(target)],
                   cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    docs = [d for d in yaml.safe_load_all(target.read_text()) if d]
    assert [d["kind"] for d in docs] == ["Role", "RoleBinding"]
    assert docs[0]["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps", "pods", "secrets"], "verbs": ["list"]}
    ]
    js = subprocess.run([*kaudit, "explain", "--user", "nobody", "--since", "7d", "--format", "json", "--clickhouse", dsn],
                        cwd=REPO, capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(js.stdout)["requests"] == 0
    bad = subprocess.run([*kaudit, "explain", "--user", "x", "--since", "soon", "--clickhouse", dsn],
                         cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "bad duration" in bad.stderr


def test_every_sample_user_with_403s_gets_exact_rbac(loaded, server):  # noqa: F811
    """All sample folders (OpenShift service accounts, anonymous non-resource requests, impersonation)."""
    by_user: dict[str, set[Denial]] = {}
    for e in loaded.events:
        if e["responsestatus_code"] != 403:
            continue
        user = e["impersonated_username"] or e["username"]
        path = "" if e["objectref_resource"] else e["request_uri"].split("?")[0]
        by_user.setdefault(user, set()).add(
            Denial(
                e["verb"],
                e["objectref_apigroup"],
                e["objectref_resource"],
                e["objectref_subresource"],
                e["objectref_namespace"],
                e["objectref_name"],
                path,
            )  # fmt: skip
        )
    assert len(by_user) == 5 and "system:anonymous" in by_user
    for user, denials in by_user.items():
        rep = get(server.url, "/api/rbac", user=user, since="all")
        objs = [d for d in yaml.safe_load_all(rep["yaml"]) if d]
        assert_exact(objs, user, sorted(denials, key=repr))
    anon = [d for d in yaml.safe_load_all(get(server.url, "/api/rbac", user="system:anonymous", since="all",
                                                  format="yaml")) if d]  # fmt: skip
    assert anon[0]["rules"] == [{"nonResourceURLs": ["/"], "verbs": ["head"]}]
