"""Requests nested as deep as Go allows (10,000 levels), on a real kube-apiserver 1.37: it logs a PATCH body as it came
(the request then fails, 422, but it is audited). Such an event once cost its whole webhook batch (the bridge answered
500, the API server retried and dropped it, the sender's own other events with it) and, read from a log file, was
dead-lettered. Now every logged event is stored, deep ones included, through the webhook and through the shipper."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.kube import REPO, component_env, live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube]


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b'"1"' + b"}" * depth


def test_deep_patches_are_stored_with_their_batch(settings, tmp_path):
    with live_pipeline(settings, tmp_path) as lp:
        kc = lp.cluster
        kc.kubectl("-n", "default", "create", "deployment", "web", "--image", "nginx")
        url = "/apis/apps/v1/namespaces/default/deployments/web"
        statuses = []
        for depth in (300, 1500, 9000):  # past orjson's writer (254), its reader (1024), Python's recursion (1000)
            merge = b'{"spec":{"template":{"metadata":{"annotations":' + nested(depth) + b"}}}}"
            statuses.append(kc.request("PATCH", url, body=merge, content_type="application/merge-patch+json")[0])
            patch = b'[{"op":"add","path":"/metadata/labels/x","value":' + nested(depth) + b"}]"
            statuses.append(kc.request("PATCH", url, body=patch, content_type="application/json-patch+json")[0])
            kc.kubectl("-n", "default", "label", "deployment", "web", f"after-{depth}=1")  # in the same batch
        kc.kubectl("-n", "default", "delete", "deployment", "web")
        assert set(statuses) == {422}, statuses  # refused by the API server, audited all the same
        logged = kc.logged_events()
        deep = {e["auditID"]: len(orjson.dumps(e["requestObject"])) for e in logged
                if e["verb"] == "patch" and e["user"]["username"] == "admin" and b'{"a":{"a":' in orjson.dumps(e)}  # fmt: skip
        assert len(deep) == 6
        stored = lp.wait_stored({(e["auditID"], e["stage"]) for e in logged}, timeout=90)
        assert len(stored) >= len(logged)
        rows = dict(lp.sql("SELECT auditid, length(request_object) FROM audit_events WHERE cluster = 'local' AND "
                           f"auditid IN ({', '.join(repr(a) for a in deep)})"))  # fmt: skip
        assert rows == deep  # the objects as the API server wrote them, byte for byte in length
        labels = lp.sql("SELECT count() FROM audit_events WHERE cluster = 'local' AND request_uri LIKE "
                        "'%deployments/web%' AND verb = 'patch' AND username = 'admin' AND length(request_object) < 200")
        assert labels == [[3]]
        assert lp.sql("SELECT count() FROM alerts WHERE cluster = 'local' AND rule_id = 'deployment-deleted'") == [[1]]
        # the API server's own log file, read by the shipper as another cluster: the same set
        files = [str(p) for p in kc.audit_log_files()]
        subprocess.run([sys.executable, "-m", "pipeline.cli", "ship", "--once", "--cluster", "local-file", *files],
                       cwd=REPO, env=component_env(settings, lp.api_port), check=True, timeout=300)  # fmt: skip
        want = {(e["auditID"], e["stage"]) for e in kc.logged_events()}
        assert lp.wait_stored(want, cluster="local-file", timeout=90) == want
