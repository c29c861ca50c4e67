"""JSON that Go reads and orjson/msgspec do not, on a real kube-apiserver 1.37, which logs a PATCH body as it came:
nesting as deep as Go allows (10,000 levels; the request then fails, 422, but is audited) and lone UTF-16 surrogate
escapes (the patch applies: Go reads each as U+FFFD). Such an event once cost its whole webhook batch (the bridge
answered 500 or 400, the API server retried and dropped it, the sender's own other events with it) and, read from a
log file, was dead-lettered. Now every logged event is stored through the webhook and through the shipper."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from tests.kube import REPO, component_env, live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube]


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b'"1"' + b"}" * depth


def test_json_only_go_reads_is_stored_with_its_batch(settings, tmp_path):
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
        # lone UTF-16 surrogate escapes: Go reads each as U+FFFD (the patch applies), orjson and msgspec refuse them
        lone = b'{"metadata":{"annotations":{"lone-high":"\\ud800","lone-low":"x\\udc00y","pair":"\\ud83d\\ude00"}}}'
        assert kc.request("PATCH", url, body=lone, content_type="application/merge-patch+json")[0] == 200
        kc.kubectl("-n", "default", "label", "deployment", "web", "after-surrogates=1")  # in the same batch
        # numbers past float64 (Go's scanner takes any number; orjson and msgspec refuse 1e400)
        huge = b'{"metadata":{"labels":{"n":"1"}},"x":1e400,"y":-2E+999,"z":123456789012345678901234567890}'
        assert kc.request("PATCH", url, body=huge, content_type="application/merge-patch+json")[0] == 400  # audited
        kc.kubectl("-n", "default", "label", "deployment", "web", "after-numbers=1")
        # bytes that are not UTF-8 inside a string (Go's decoder reads each as U+FFFD)
        latin = b'{"metadata":{"annotations":{"latin":"caf\xe9","cut":"\xe2\x82"}}}'
        assert kc.request("PATCH", url, body=latin, content_type="application/merge-patch+json")[0] == 200
        kc.kubectl("-n", "default", "label", "deployment", "web", "after-latin=1")
        kc.kubectl("-n", "default", "delete", "deployment", "web")
        assert set(statuses) == {422}, statuses  # refused by the API server, audited all the same
        written = b"".join(p.read_bytes() for p in kc.audit_log_files())
        assert b'"lone-high":"\\ud800"' in written and b'"x":1e400' in written  # logged as they came
        assert b'"latin":"caf\xe9"' in written  # not UTF-8 in the API server's own log either
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
        assert labels == [[9]]  # three labels; the surrogate, number and Latin-1 patches and a label after each
        got = lp.sql("SELECT request_object FROM audit_events WHERE cluster = 'local' AND verb = 'patch' AND "
                     "position(request_object, 'lone-high') > 0")
        assert [orjson.loads(r[0])["metadata"]["annotations"] for r in got] == [
            {"lone-high": "\ufffd", "lone-low": "x\ufffdy", "pair": "\U0001f600"}]  # as Go reads them
        got = lp.sql("SELECT request_object FROM audit_events WHERE cluster = 'local' AND verb = 'patch' AND "
                     "position(request_object, '1e400') > 0")
        assert [r[0] for r in got] == [huge.decode()]  # the numbers as written
        rows = lp.sql(
            "SELECT request_object FROM audit_events WHERE cluster = 'local' AND position(request_object, '\"latin\"') > 0 "
            "AND verb = 'patch'")
        assert [orjson.loads(r[0])["metadata"]["annotations"] for r in rows] == [{"latin": "caf\ufffd", "cut": "\ufffd"}]
        assert lp.sql("SELECT count() FROM alerts WHERE cluster = 'local' AND rule_id = 'deployment-deleted'") == [[1]]
        # the API server's own log file, read by the shipper as another cluster: the same set
        want = {(e["auditID"], e["stage"]) for e in kc.logged_events()}  # before: the file only grows meanwhile
        files = [str(p) for p in kc.audit_log_files()]
        subprocess.run([sys.executable, "-m", "pipeline.cli", "ship", "--once", "--cluster", "local-file", *files],
                       cwd=REPO, env=component_env(settings, lp.api_port), check=True, timeout=300)  # fmt: skip
        assert want <= lp.wait_stored(want, cluster="local-file", timeout=90)
