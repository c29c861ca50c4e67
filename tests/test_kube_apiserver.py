"""kaudit against a real kube-apiserver 1.37 (built from its Go module, infra/control-plane/): its webhook posts to
the bridge over HTTPS with the shipped webhook kubeconfigs (token and client-certificate variants), and the
warehouse must hold exactly what the API server wrote to its own log; the log, rotated by the API server, read by
`kaudit ship` as another cluster, gives the same set.

The API server keeps logging after its webhook backend has shut down (the ResponseComplete of watches it ends at
shutdown: observed ~40 at 1.37); those are the only events the webhook may lack, and the comparison checks that
they were logged at shutdown."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.devcluster import scenario
from tests.kube import REPO, LivePipeline, component_env, live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube]

EVERYTHING_AT_REQUEST_RESPONSE = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: RequestResponse\n"


def key(e: dict[str, Any]) -> tuple[str, str]:
    return (e["auditID"], e["stage"])


def ts(e: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(e["stageTimestamp"].replace("Z", "+00:00"))


def settle(lp: LivePipeline, cluster: str | None = None, quiet: float = 3.0, timeout: float = 60) -> set:
    """The stored keys once they stop changing for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = lp.stored_keys(cluster), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = lp.stored_keys(cluster)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return last


def stop_and_compare(lp: LivePipeline) -> tuple[list[dict[str, Any]], set]:
    """Wait until everything logged so far is stored, stop the API server, and check the warehouse holds exactly
    the logged set but for events logged at shutdown. Returns (the stored events as logged, the stored keys)."""
    kc = lp.cluster
    lp.wait_stored({key(e) for e in kc.logged_events()})
    stopping = datetime.now(UTC)
    subprocess.run(["bash", str(REPO / "infra/control-plane/control-plane.sh"), "stop-apiserver"],
                   env=kc.env(), check=True)  # fmt: skip
    logged = kc.logged_events()
    stored = settle(lp)
    logged_keys = {key(e) for e in logged}
    assert len(logged_keys) == len(logged), "the API server logged an (auditID, stage) twice"
    assert stored <= logged_keys, f"stored but never logged: {sorted(stored - logged_keys)[:5]}"
    missing = [e for e in logged if key(e) not in stored]
    late = [e for e in missing if ts(e) < stopping - timedelta(seconds=3)]
    assert not late, f"{len(late)} events logged before shutdown never stored, e.g. {late[:2]}"
    assert len(missing) < 200, f"{len(missing)} events logged at shutdown were not sent (expected a few dozen)"
    print(f"kube: {len(logged)} events logged, {len(stored)} stored through the webhook, {len(missing)} logged at "
          f"shutdown and not sent ({Counter(e['stage'] for e in missing)})")  # fmt: skip
    return [e for e in logged if key(e) in stored], stored


def test_webhook_stores_exactly_the_logged_events_and_the_rotated_log_ships_the_same(settings, tmp_path):
    policy = tmp_path / "everything-request-response.yaml"
    policy.write_text(EVERYTHING_AT_REQUEST_RESPONSE)
    with live_pipeline(settings, tmp_path, policy=policy, log_maxsize_mb=1) as lp:
        kc = lp.cluster
        facts = scenario.coverage(kc)
        assert facts["statuses"]["patch-json"] == facts["statuses"]["patch-merge"] == 200
        assert facts["statuses"]["patch-strategic"] == 200 and facts["statuses"]["update"] == 200
        assert facts["statuses"]["patch-json-workload"] == 200
        assert facts["statuses"]["node-proxy-run"] == 404, facts["statuses"]  # authorized; no such node
        assert facts["statuses"]["csr-node-1-by-alice"] == 201 and facts["statuses"]["csr-mallory"] == 403
        assert facts["statuses"]["anonymous-namespaces"] == 403 and facts["statuses"]["carol-secrets"] == 403
        assert facts["demo_denied"] == 4
        # enough RequestResponse volume that the API server rotates its 1 MB log several times
        for i in range(150):
            kc.request("GET", "/api/v1/namespaces/kube-system/configmaps", user="bob" if i % 2 else "admin")
        assert len(kc.audit_log_files()) >= 2, "the API server did not rotate its log"
        events, stored = stop_and_compare(lp)
        assert len(stored) > 700

        # aggregates: per verb and per status code, as counted from the log
        def wait_sum(table: str, want: int) -> list:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = lp.sql(f"SELECT sum(count) FROM {table} WHERE cluster = 'local'")
                if rows and rows[0][0] == want:
                    break
                time.sleep(0.5)
            return rows

        assert wait_sum("verb_stats", len(events)) == [[len(events)]]
        wait_sum("status_stats", len(events))
        verbs = dict(lp.sql("SELECT verb, sum(count) FROM verb_stats WHERE cluster = 'local' GROUP BY verb"))
        assert verbs == dict(Counter(e["verb"] for e in events))
        codes = dict(lp.sql("SELECT code, sum(count) FROM status_stats WHERE cluster = 'local' GROUP BY code"))
        assert codes == dict(Counter(e.get("responseStatus", {}).get("code", 0) for e in events))

        # the seed queries, against counts taken from the log
        deletes = lp.query('logtype="Kubernetes Audit Logs" and verb="delete" groupby objectref_resource,username')
        got = {(r[0], r[1]): r[-1] for r in deletes["rows"]}
        want = Counter((e["objectRef"]["resource"], e["user"]["username"]) for e in events if e["verb"] == "delete")
        assert got == dict(want) and want
        denied = lp.query('logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" groupby username')
        want = Counter(e["user"]["username"] for e in events
                       if e["verb"] == "list" and e.get("responseStatus", {}).get("code") == 403)  # fmt: skip
        assert {r[0]: r[-1] for r in denied["rows"]} == dict(want)
        assert want[scenario.DEMO_SA] >= facts["demo_denied"] == 4

        # the alerts a security team expects from this scenario
        deadline = time.monotonic() + 60
        expected = {"risky-verb", "pod-exec", "privileged-pod", "host-network-pod", "sensitive-hostpath-pod",
                    "cluster-admin-binding", "role-wildcard", "rbac-changed", "impersonation", "secret-read",
                    "secret-access-denied", "namespace-deleted", "deployment-deleted", "node-proxy-kubelet",
                    "csr-created", "csr-privileged-subject"}  # fmt: skip
        fired: set = set()
        while time.monotonic() < deadline and not expected <= fired:
            fired = {r[0] for r in lp.sql("SELECT DISTINCT rule_id FROM alerts WHERE cluster = 'local'")}
            time.sleep(0.5)
        assert expected <= fired, f"did not fire: {sorted(expected - fired)}"
        # the decoded CSR subjects: the node identity alice asked for, and system:masters though refused
        csrs: set = set()
        while time.monotonic() < deadline and csrs != {"node-1-by-alice", "mallory"}:
            csrs = {r[0] for r in lp.sql("SELECT objectref_name FROM alerts WHERE rule_id = 'csr-privileged-subject'")}
            time.sleep(0.5)
        assert csrs == {"node-1-by-alice", "mallory"}, csrs
        # the JSON patch of the deployment's template and the hostPath PersistentVolume, as the API server logged them
        want = {("host-pid-pod", "deployments", "patch"), ("sensitive-hostpath-pod", "deployments", "patch"),
                ("hostpath-pod", "deployments", "patch"), ("sensitive-hostpath-volume", "persistentvolumes", "create"),
                ("json-patch-unseen-value", "deployments", "patch")}  # fmt: skip
        on: set = set()
        while time.monotonic() < deadline and not want <= on:
            on = {tuple(r) for r in lp.sql("SELECT DISTINCT rule_id, objectref_resource, verb FROM alerts WHERE "
                                           "cluster = 'local' AND objectref_resource IN ('deployments', 'persistentvolumes')")}  # fmt: skip
            time.sleep(0.5)
        assert want <= on, f"did not fire: {sorted(want - on)}"

        # the rotated log files, read by the shipper as another cluster, give the full logged set
        files = [str(p) for p in kc.audit_log_files()]
        env = component_env(settings, lp.api_port)
        subprocess.run([sys.executable, "-m", "pipeline.cli", "ship", "--once", "--cluster", "local-file", *files],
                       cwd=REPO, env=env, check=True, timeout=300)  # fmt: skip
        all_logged = {key(e) for e in kc.logged_events()}
        shipped = lp.wait_stored(all_logged, cluster="local-file")
        assert shipped == all_logged
        print(f"kube: {len(files)} log files (rotated at 1 MB) shipped: {len(shipped)} events; rules fired: {sorted(fired)}")


def test_shipped_policy_and_client_certificate_webhook(settings, tmp_path):
    """infra/kubernetes/audit-policy.yaml and webhook-kubeconfig-cert.yaml as shipped (only paths and the server
    URL filled in): the API server loads them, the bridge authenticates the client certificate's CN as the cluster,
    and the policy's choices show (no RequestReceived, no probes, Secrets at Metadata)."""
    shipped = (REPO / "infra/kubernetes/webhook-kubeconfig-cert.yaml").read_text()
    with live_pipeline(settings, tmp_path, webhook="cert", cluster="prod-eu") as lp:
        kc = lp.cluster
        used = (kc.state / "webhook-kubeconfig.yaml").read_text()
        changed = [(a, b) for a, b in zip(shipped.splitlines(), used.splitlines(), strict=True) if a != b]
        assert {a.split(":")[0].strip() for a, _ in changed} <= {"server", "certificate-authority",
                                                                   "client-certificate", "client-key"}  # fmt: skip
        kc.kubectl("create", "namespace", "shop")
        kc.kubectl("-n", "shop", "create", "secret", "generic", "api", "--from-literal", "key=s3cr3t-value")
        kc.kubectl("-n", "shop", "get", "secrets")
        kc.request("GET", "/livez", user=None)
        kc.kubectl("-n", "shop", "delete", "secret", "api")
        events, stored = stop_and_compare(lp)
        assert events and all(e["stage"] != "RequestReceived" for e in events)
        assert not [e for e in events if e.get("requestURI", "").startswith("/livez")]
        secret_events = [e for e in events if e.get("objectRef", {}).get("resource") == "secrets"]
        assert secret_events and all(e["level"] == "Metadata" for e in secret_events)
        rows = lp.sql("SELECT count() FROM audit_events WHERE cluster = 'prod-eu' AND objectref_resource = 'secrets'")
        assert rows == [[len(secret_events)]]
