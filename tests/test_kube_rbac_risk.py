"""`rbac suggest` against the real kube-apiserver 1.37.2: a user who asks for '*' (a resource, an API group, a
subresource, a non-resource URL) is recorded by the API server with '*' in those attributes; the suggestion
leaves those out (RBAC would read them as everything), says so, and once applied the wildcards are still
denied while the literal request is allowed. Without pipeline/rbac/risk.py the same suggestion granted bob
every resource of the namespace, Secrets included."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.kube import REPO, component_env, live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube]

METADATA_POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Metadata\n"
WILD = [
    "/api/v1/namespaces/default/*",  # resource '*'
    "/apis/*/v1/namespaces/default/things",  # API group '*'
    "/api/v1/namespaces/default/pods/web/*",  # subresource '*'
    "/*",  # non-resource URL '/*'
]
LITERAL = "/api/v1/namespaces/default/configmaps/settings"


def test_wildcard_denials_are_not_granted(settings, tmp_path):
    policy = tmp_path / "metadata.yaml"
    policy.write_text(METADATA_POLICY)
    with live_pipeline(settings, tmp_path, policy=policy) as lp:
        kc = lp.cluster
        for path in [*WILD, LITERAL]:
            assert kc.request("GET", path, user="bob")[0] == 403, path
        logged = [e for e in kc.logged_events() if e["user"]["username"] == "bob"]
        # what the API server itself recorded: '*' in the attributes the RBAC authorizer saw
        refs = {(e["requestURI"], tuple(sorted((e.get("objectRef") or {}).items()))) for e in logged}
        wild_attrs = [(k, v) for _, ref in refs for k, v in ref if k in ("resource", "apiGroup", "subresource") and "*" in v]
        assert len(wild_attrs) >= 3, refs
        lp.wait_stored({(e["auditID"], e["stage"]) for e in logged})

        env = component_env(settings, lp.api_port)
        out = subprocess.run([sys.executable, "-m", "pipeline.cli", "rbac", "suggest", "--user", "bob", "--since", "1h"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
        assert out.count("# NOT GRANTED:") == len(WILD), out
        rules = [ln for ln in out.splitlines() if not ln.startswith("#")]
        assert not any("'*'" in ln or '"*"' in ln or "- '*" in ln or "/*" in ln for ln in rules), out
        kc.kubectl("apply", "-f", "-", input=out)
        time.sleep(1.0)  # the RBAC authorizer's informer
        assert kc.request("GET", LITERAL, user="bob")[0] == 404  # allowed now (and not found)
        for path in [*WILD, "/api/v1/namespaces/default/secrets", "/api/v1/namespaces/default/pods"]:
            assert kc.request("GET", path, user="bob")[0] == 403, path
