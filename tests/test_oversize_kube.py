"""Events too large for a Kafka record, on a real kube-apiserver 1.37 whose pipeline has a managed Kafka's 1 MiB
record limit: a ConfigMap of 1 MB (the most a ConfigMap may hold) written at RequestResponse level makes an event of about
2.4 MB. It used to be stored nowhere (dead-lettered whole), so its write raised no alert at all -- not even
configmap-credentials for the password it holds. Now it is stored without its objects (pipeline/ingest/oversize.py)
through the webhook and through the shipper, the write alerts as write-truncated-for-size, and every other event
of its batch is stored as it came."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.kube import REPO, component_env, live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube]

MIB = 1024 * 1024


def configmap(name: str, size: int) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"password": "p" * size}}


def test_an_event_over_the_record_limit_is_stored_without_its_objects(settings, tmp_path):
    s = settings.model_copy(update={"max_message_bytes": MIB})
    policy = tmp_path / "policy.yaml"  # the project's policy logs ConfigMaps at Metadata; many log them whole
    policy.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
                      "rules:\n  - level: RequestResponse\n")
    with live_pipeline(s, tmp_path, policy=policy) as lp:
        kc = lp.cluster
        url = "/api/v1/namespaces/default/configmaps"
        assert kc.request("POST", url, body=configmap("small", 100))[0] == 201
        assert kc.request("POST", url, body=configmap("big", 1_000_000))[0] == 201
        assert kc.request("DELETE", f"{url}/big")[0] == 200
        logged = kc.logged_events()
        big = [e for e in logged if e.get("objectRef", {}).get("name") == "big" and e["verb"] == "create"]
        assert big and all(e["level"] == "RequestResponse" and "requestObject" in e for e in big)
        stored = lp.wait_stored({(e["auditID"], e["stage"]) for e in logged}, timeout=90)
        assert {(e["auditID"], e["stage"]) for e in logged} <= stored  # the big write and all around it
        rows = lp.sql("SELECT stage, length(request_object), length(response_object), annotations['audit.k8s.io/truncated'], "
                      "toUInt64(annotations['kaudit.io/original-bytes']) FROM audit_events WHERE cluster = 'local' "
                      f"AND auditid = '{big[0]['auditID']}' ORDER BY stage")  # fmt: skip
        assert [r[:4] for r in rows] == [["ResponseComplete", 0, 0, "true"]] and rows[0][4] > 2_000_000
        small = lp.sql("SELECT max(length(request_object)) FROM audit_events WHERE cluster = 'local' AND "
                       "objectref_name = 'small' AND verb = 'create'")
        assert 100 < small[0][0] < 1000  # stored as it came
        alerts = dict(lp.sql("SELECT rule_id, count() FROM alerts WHERE cluster = 'local' AND objectref_name IN "
                             "('big', 'small') GROUP BY rule_id"))  # fmt: skip
        assert alerts.get("write-truncated-for-size") == 1 and alerts.get("configmap-credentials") == 1  # small's
        # the API server's own log file, read by the shipper as another cluster: the same events
        want = {(e["auditID"], e["stage"]) for e in kc.logged_events()}  # before: the file only grows meanwhile
        files = [str(p) for p in kc.audit_log_files()]
        subprocess.run([sys.executable, "-m", "pipeline.cli", "ship", "--once", "--cluster", "local-file", *files],
                       cwd=REPO, env=component_env(s, lp.api_port), check=True, timeout=300)  # fmt: skip
        assert want <= lp.wait_stored(want, cluster="local-file", timeout=90)
        cut = lp.sql("SELECT count() FROM audit_events WHERE cluster = 'local-file' AND objectref_name = 'big' AND "
                     "annotations['audit.k8s.io/truncated'] = 'true'")
        assert cut[0][0] >= 1
