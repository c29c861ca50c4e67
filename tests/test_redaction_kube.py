"""Credentials against a real kube-apiserver 1.37 at level RequestResponse for everything: kubectl create, apply
(client-side: last-applied-configuration; server-side: an apply patch), every patch type, list/Table/
metadata-only reads, deletecollection, kubectl create token (TokenRequest) and a TokenReview, through the real
webhook -> bridge -> worker -> sink. The API server's own log holds every value (the classes are real); no topic
after the raw one, no warehouse row and no alert holds any of them, plain, base64 or base64url."""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from pipeline import config
from pipeline.agents import testing as T
from tests.data.handmade.credentials import forms
from tests.kube import live_pipeline

pytestmark = [pytest.mark.kafka, pytest.mark.kube, pytest.mark.timeout(900)]

EVERYTHING_AT_REQUEST_RESPONSE = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: RequestResponse\n"
NS = "vault"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def secret(name: str, data: dict[str, str] | None = None, string_data: dict[str, str] | None = None,
           type_: str = "Opaque") -> str:  # fmt: skip
    obj: dict = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "type": type_}
    if data:
        obj["data"] = {k: b64(v) for k, v in data.items()}
    if string_data:
        obj["stringData"] = string_data
    return json.dumps(obj)


def test_no_credential_downstream_of_a_real_api_server(settings, tmp_path):
    values = {k: f"kubecred{k}{uuid.uuid4().hex[:12]}" for k in
              ("create", "apply", "applied", "reapply", "jsonpatch", "merge", "strategic", "ssa", "bootstrap",
               "dryrun", "stringdata")}  # fmt: skip
    policy = tmp_path / "everything-request-response.yaml"
    policy.write_text(EVERYTHING_AT_REQUEST_RESPONSE)
    with live_pipeline(settings, tmp_path, policy=policy) as lp:
        kc = lp.cluster
        k = kc.kubectl
        k("create", "namespace", NS)
        k("-n", NS, "create", "secret", "generic", "created", "--from-literal", f"password={values['create']}")
        k("-n", NS, "create", "secret", "generic", "dry", "--from-literal", f"p={values['dryrun']}",
          "--dry-run=server", "-o", "name")  # fmt: skip
        # client-side apply: the last-applied-configuration annotation holds the whole Secret
        k("apply", "-f", "-", input=secret("applied", {"password": values["apply"]}, {"token": values["stringdata"]}))
        k("apply", "-f", "-", input=secret("applied", {"password": values["reapply"], "more": values["applied"]}))
        # server-side apply: an apply patch, a whole object as the request body
        k("apply", "--server-side", "-f", "-", input=secret("ssa", {"key": values["ssa"]}))
        base = f"/api/v1/namespaces/{NS}/secrets/created"
        st_json, _ = kc.request("PATCH", base, body=[{"op": "add", "path": "/data/extra", "value": b64(values["jsonpatch"])}],
                                content_type="application/json-patch+json")  # fmt: skip
        st_merge, _ = kc.request("PATCH", base, body={"stringData": {"m": values["merge"]}},
                                 content_type="application/merge-patch+json")  # fmt: skip
        st_smp, _ = kc.request("PATCH", base, body={"data": {"s": b64(values["strategic"])}},
                               content_type="application/strategic-merge-patch+json")  # fmt: skip
        assert st_json == st_merge == st_smp == 200
        k("-n", "kube-system", "apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system"},
            "stringData": {"token-id": "abcdef", "token-secret": values["bootstrap"],
                           "usage-bootstrap-authentication": "true"}}))  # fmt: skip
        # reads: a list, a Table (kubectl get: metadata rows, the annotation included) and a full-object Table,
        # a metadata-only list, one Secret
        k("-n", NS, "get", "secrets", "-o", "json")
        k("-n", NS, "get", "secrets")
        k("-n", NS, "get", "secret", "applied", "-o", "yaml")
        kc.request("GET", f"/api/v1/namespaces/{NS}/secrets?includeObject=Object",
                   headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})  # fmt: skip
        kc.request("GET", f"/api/v1/namespaces/{NS}/secrets",
                   headers={"Accept": "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"})  # fmt: skip
        # tokens: kubectl create token (TokenRequest), then the token submitted for review
        k("-n", NS, "create", "serviceaccount", "builder")
        token = k("-n", NS, "create", "token", "builder", "--duration", "1h").stdout.decode().strip()
        st_review, review = kc.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})  # fmt: skip
        assert st_review == 201 and review["status"]["authenticated"] is True
        # deletecollection: the response lists every deleted Secret, values included
        st_del, _ = kc.request("DELETE", f"/api/v1/namespaces/{NS}/secrets")
        assert st_del == 200

        logged = kc.logged_events()
        lp.wait_stored({(e["auditID"], e["stage"]) for e in logged})
        creds = [*values.values(), token]
        all_forms = [f for v in creds for f in forms(v)]
        # the classes are real: the API server's own log holds every value
        log_bytes = b"".join(p.read_bytes() for p in kc.audit_log_files())
        for v in creds:
            assert any(f in log_bytes for f in forms(v)), f"the API server never logged {v!r}: scenario broken"

        s = settings
        raw = b"".join(m.value() for m in T.read_all(s, config.RAW, idle=1.0))
        assert any(f in raw for f in all_forms)  # the raw topic keeps the cluster's bytes (README: protect it)
        for topic in (config.EVENTS, config.VERB_STATS, config.STATUS_STATS, config.ALERTS, config.ALERTS_JSON,
                      config.DEADLETTER):  # fmt: skip
            msgs = T.read_all(s, topic, idle=1.0, timeout=30)
            blob = b"".join((m.value() or b"") + (m.key() or b"") + b"".join(v for _, v in (m.headers() or []))
                            for m in msgs)  # fmt: skip
            if topic == config.EVENTS:
                assert len(msgs) > 0
            found = [f for f in all_forms if f in blob]
            assert not found, f"{topic} holds {found[:3]}"
        rows = lp.sql("SELECT * FROM audit_events")
        text = json.dumps(rows, default=str).encode()
        assert not [f for f in all_forms if f in text]
        alerts = json.dumps(lp.sql("SELECT * FROM alerts"), default=str).encode()
        assert not [f for f in all_forms if f in alerts]
        flagged = {r[0] for r in lp.sql("SELECT DISTINCT arrayJoin(redacted) FROM audit_events")}
        assert {"Secret.data", "Secret.stringData", "Secret.last-applied", "TokenRequest.status.token",
                "TokenReview.spec.token"} <= flagged  # fmt: skip
