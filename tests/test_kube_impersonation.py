"""Kubernetes 1.35+ impersonation against the real kube-apiserver 1.37.2: constrained impersonation (beta, on by
default since 1.36) writes authenticationMetadata.impersonationConstraint, its denials name the
impersonate:<mode> / impersonate-on:<mode>:<verb> verbs; kaudit stores both as columns, alerts on the denials,
and `kaudit rbac suggest` turns them into RBAC that the same API server accepts and that then allows exactly
the denied impersonations."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pipeline.devcluster import bin_dir
from tests.kube import REPO, component_env, live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube]

METADATA_POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n"
GRANT = """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: alice-as-bob}
rules:
  - {apiGroups: [authentication.k8s.io], resources: [users], resourceNames: [bob], verbs: ["impersonate:user-info"]}
  - {apiGroups: [""], resources: [pods], verbs: ["impersonate-on:user-info:list"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-as-bob}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: alice-as-bob}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"""


def as_(kc, user: str, path: str, target: str) -> tuple[int, object]:
    return kc.request("GET", path, user=user, headers={"Impersonate-User": target})


def test_constrained_impersonation_fields_rules_and_suggest(settings, tmp_path):
    policy = tmp_path / "metadata.yaml"
    policy.write_text(METADATA_POLICY)
    with live_pipeline(settings, tmp_path, policy=policy) as lp:
        kc = lp.cluster
        kc.kubectl("apply", "-f", "-", input=GRANT)
        time.sleep(1.0)  # the RBAC authorizer's informer
        allowed, _ = as_(kc, "alice", "/api/v1/namespaces/default/pods", "bob")
        denied_on, body_on = as_(kc, "alice", "/api/v1/namespaces/default/secrets", "bob")
        denied_id, body_id = as_(kc, "alice", "/api/v1/namespaces/default/pods", "carol")
        assert denied_on == denied_id == 403, (body_on, body_id)
        assert allowed != 403 or "impersonate" not in str(allowed)
        logged = [e for e in kc.logged_events() if e["user"]["username"] == "alice"]
        lp.wait_stored({(e["auditID"], e["stage"]) for e in logged})
        rows = lp.sql(
            "SELECT request_uri, impersonated_username, impersonation_constraint, authorization_verb, responsestatus_code "
            "FROM audit_events WHERE username = 'alice' AND stage = 'ResponseComplete' ORDER BY stage_ts"
        )
        # what the real server wrote: the constraint of the allowed request and the verbs of both denials
        ok = [r for r in rows if r[1] == "bob" and r[0].endswith("/pods")]
        assert ok and ok[0][2] == "impersonate:user-info", rows
        verbs = {r[3] for r in rows if r[4] == 403}
        assert "impersonate-on:user-info:list" in verbs and "impersonate:user-info" in verbs, rows
        # the raw events carry authenticationMetadata exactly as the audit/v1 types name it
        raw = [e for e in logged if e.get("impersonatedUser", {}).get("username") == "bob" and e["stage"] == "ResponseComplete"]
        assert raw and raw[0]["authenticationMetadata"] == {"impersonationConstraint": "impersonate:user-info"}
        # the impersonation latency annotation: k8s.io/apiserver adds the apiserver.latency.k8s.io/* annotations only
        # to requests slower than 500 ms (pkg/endpoints/filters/audit.go), so usually none here; any is stored as sent
        lat = "apiserver.latency.k8s.io/impersonation"
        with_lat = {e["auditID"]: e["annotations"][lat] for e in logged if lat in e.get("annotations", {})}
        stored_lat = dict(lp.sql(f"SELECT auditid, annotations['{lat}'] FROM audit_events WHERE username = 'alice' "
                                 f"AND mapContains(annotations, '{lat}')"))  # fmt: skip
        assert stored_lat == with_lat
        print(f"{len(with_lat)} of {len(logged)} events carry {lat}")
        # the query language sees the new columns
        q = lp.query('impersonation_constraint="impersonate:user-info" groupby username', since="1h")
        assert [r[0] for r in q["rows"]] == ["alice"]

        # the denials alert
        deadline = time.monotonic() + 60
        fired: set = set()
        while time.monotonic() < deadline and "impersonation-denied" not in fired:
            fired = {r[0] for r in lp.sql("SELECT DISTINCT rule_id FROM alerts WHERE username = 'alice'")}
            time.sleep(0.5)
        assert {"impersonation-denied", "impersonation"} <= fired, fired

        # rbac suggest: valid for this API server, and afterwards the two impersonations are allowed
        env = component_env(settings, lp.api_port)
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "rbac", "suggest", "--user", "alice", "--since", "1h"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
        assert "impersonate:user-info" in out and "impersonate-on:user-info:list" in out, out
        kc.kubectl("apply", "-f", "-", input=out)
        time.sleep(1.0)
        code_on, body_on = as_(kc, "alice", "/api/v1/namespaces/default/secrets", "bob")
        code_id, body_id = as_(kc, "alice", "/api/v1/namespaces/default/pods", "carol")
        for code, body in ((code_on, body_on), (code_id, body_id)):
            assert code != 403 or "cannot impersonate" not in str(body), body  # the impersonation itself passes
        # --from-cluster reads the RBAC back from the API server: everything denied is now allowed
        env["PATH"] = f"{bin_dir()}:{env.get('PATH', '')}"
        again = subprocess.run([sys.executable, "-m", "pipeline.cli", "rbac", "suggest", "--user", "alice", "--since", "1h",
                                "--from-cluster", "--kubeconfig", str(kc.kubeconfig("admin"))],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert "are all allowed by the existing RBAC" in again.stdout, again.stdout
