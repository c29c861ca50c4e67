"""HAND-MADE audit events, one per class of credential a kube-apiserver at level RequestResponse puts into audit
events (written after the shapes kube-apiserver 1.37 logs; not captured from a cluster).

Every case carries its own credential values (``SECRETS[name]``): distinct, alphanumeric (so no JSON escaping
can hide them from a byte search) and long enough never to occur by chance. Tests look for each value plain, in
base64 and in base64url anywhere downstream. ``EXPECTED[name]`` is the event's ``redacted`` column.
``KEPT`` are cases that hold no credential by the model: their values must stay.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

LA = "kubectl.kubernetes.io/last-applied-configuration"


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def forms(value: str) -> list[bytes]:
    """The byte forms a credential value can take downstream: plain, base64, base64url (unpadded)."""
    raw = value.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw).rstrip(b"=")]


def secret_value(case: str, n: int = 0) -> str:
    return f"HANDMADEcred{case.replace('-', '')}{n}Zq7"


def event(auditid: str, verb: str, resource: str, *, group: str = "", subresource: str = "", name: str = "s",
          request: Any = None, response: Any = None, code: int = 200, namespace: str = "ns",
          user: str = "alice") -> dict[str, Any]:  # fmt: skip
    ref: dict[str, Any] = {"resource": resource, "namespace": namespace, "name": name, "apiVersion": "v1"}
    if group:
        ref["apiGroup"] = group
    if subresource:
        ref["subresource"] = subresource
    ev: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse", "auditID": auditid,
        "stage": "ResponseComplete", "requestURI": f"/api/v1/namespaces/{namespace}/{resource}/{name}", "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]}, "sourceIPs": ["10.1.2.3"],
        "userAgent": "kubectl/v1.37.2", "objectRef": ref, "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": "2026-12-01T10:00:00.000001Z", "stageTimestamp": "2026-12-01T10:00:00.002001Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC"},
    }  # fmt: skip
    if request is not None:
        ev["requestObject"] = request
    if response is not None:
        ev["responseObject"] = response
    return ev


def secret(name: str, data: dict[str, str] | None = None, string_data: dict[str, str] | None = None,
           last_applied: bool = False, type_: str = "Opaque", kind: bool = True) -> dict[str, Any]:  # fmt: skip
    """A Secret as the API writes it (data base64); with ``last_applied``, kubectl apply's annotation (the
    whole object as JSON text, values included, ending in a newline as kubectl writes it)."""
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret"} if kind else {}
    obj["metadata"] = {"name": name, "namespace": "ns", "uid": "u-" + name, "resourceVersion": "7"}
    if data is not None:
        obj["data"] = {k: b64(v) for k, v in data.items()}
    if string_data is not None:
        obj["stringData"] = string_data
    obj["type"] = type_
    if last_applied:
        applied = {"apiVersion": "v1", "kind": "Secret", "metadata": {"annotations": {}, "name": name, "namespace": "ns"},
                   "type": type_}  # fmt: skip
        if data is not None:
            applied["data"] = {k: b64(v) for k, v in data.items()}
        if string_data is not None:
            applied["stringData"] = string_data
        obj["metadata"]["annotations"] = {LA: orjson.dumps(applied).decode() + "\n", "team": "payments"}
    return obj


def _cases() -> tuple[dict[str, dict], dict[str, list[str]], dict[str, list[str]]]:
    cases: dict[str, dict] = {}
    secrets: dict[str, list[str]] = {}
    expected: dict[str, list[str]] = {}

    def add(name: str, ev: dict, values: list[str], ids: list[str]) -> None:
        cases[name] = ev
        secrets[name] = values
        expected[name] = ids

    v = [secret_value("create", i) for i in range(2)]
    add("secret-create", event("h-create", "create", "secrets", request=secret("s", {"password": v[0]}, {"token": v[1]}),
                               response=secret("s", {"password": v[0], "token": v[1]}), code=201),
        v, ["Secret.data", "Secret.stringData"])  # fmt: skip

    v = [secret_value("apply", i) for i in range(2)]
    add("secret-apply-last-applied",
        event("h-apply", "patch", "secrets",
              request={"metadata": {"annotations": {LA: orjson.dumps(secret("s", {"password": v[0]}, None))
                                                        .decode() + "\n"}}, "data": {"password": b64(v[0])}},
              response=secret("s", {"password": v[0], "apikey": v[1]}, last_applied=True)),
        v, ["Secret.data", "Secret.last-applied"])  # fmt: skip

    v = [secret_value("createapplied", 0)]
    add("secret-create-by-apply", event("h-create-la", "create", "secrets",
                                        request=secret("s", {"password": v[0]}, last_applied=True),
                                        response=secret("s", {"password": v[0]}, last_applied=True), code=201),
        v, ["Secret.data", "Secret.last-applied"])  # fmt: skip

    v = [secret_value("list", i) for i in range(3)]
    add("secret-list", event("h-list", "list", "secrets", name="", response={
        "kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": "9"},
        "items": [secret("a", {"k": v[0]}, last_applied=True), secret("b", {"k": v[1]}),
                  secret("c", {"k": v[2]}, kind=False)]}),
        v, ["Secret.data", "Secret.last-applied"])  # fmt: skip

    v = [secret_value("metaonly", 0)]
    meta_item = secret("m", {"k": v[0]}, last_applied=True)
    meta_item = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta_item["metadata"]}
    add("secret-metadata-only-list", event("h-meta", "list", "secrets", name="", response={
        "kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "items": [meta_item]}),
        v, ["Secret.data", "Secret.last-applied"])  # fmt: skip

    v = [secret_value("table", i) for i in range(2)]
    meta_row = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": secret("t1", {"k": v[0]}, last_applied=True)["metadata"]}  # fmt: skip
    add("secret-table", event("h-table", "list", "secrets", name="", response={
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {},
        "columnDefinitions": [{"name": "Name", "type": "string"}, {"name": "Data", "type": "string"}],
        "rows": [{"cells": ["t1", 1], "object": meta_row},
                 {"cells": ["t2", 1], "object": secret("t2", {"k": v[1]})}]}),
        v, ["Secret.data", "Secret.last-applied"])  # fmt: skip

    v = [secret_value("jsonpatch", i) for i in range(6)]
    add("secret-json-patch", event("h-jsonpatch", "patch", "secrets", request=[
        {"op": "add", "path": "/data/password", "value": b64(v[0])},
        {"op": "replace", "path": "/data", "value": {"a": b64(v[1])}},
        {"op": "add", "path": "/stringData/x", "value": v[2]},
        {"op": "test", "path": "/data/password", "value": b64(v[0])},
        {"op": "add", "path": "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
         "value": orjson.dumps(secret("s", {"k": v[3]})).decode()},
        {"op": "replace", "path": "", "value": secret("s", {"k": v[4]})},
        {"op": "add", "path": "data/missing-slash", "value": v[5]},
        {"op": "add", "path": "/metadata/labels/team", "value": "payments"},
        {"op": "remove", "path": "/data/old"},
        {"op": "move", "from": "/data/a", "path": "/data/b"}],
        response=secret("s", {"password": v[0], "a": v[1]})),
        v, ["Secret.data", "Secret.stringData", "Secret.last-applied", "Secret.patch"])  # fmt: skip

    v = [secret_value("mergepatch", i) for i in range(2)]
    add("secret-merge-patch", event("h-merge", "patch", "secrets",
                                    request={"data": {"password": b64(v[0]), "gone": None}, "stringData": {"p": v[1]}},
                                    response=secret("s", {"password": v[0], "p": v[1]})),
        v, ["Secret.data", "Secret.stringData"])  # fmt: skip

    v = [secret_value("strategic", 0)]
    add("secret-strategic-merge-patch", event("h-smp", "patch", "secrets", request={
        "$retainKeys": ["data", "type"], "data": {"password": b64(v[0])},
        "metadata": {"annotations": {LA: orjson.dumps(secret("s", {"password": v[0]})).decode()}}},
        response=secret("s", {"password": v[0]})),
        v, ["Secret.data", "Secret.last-applied"])  # fmt: skip

    v = [secret_value("ssa", i) for i in range(2)]
    add("secret-apply-patch", event("h-ssa", "patch", "secrets",
                                    request=secret("s", {"password": v[0]}, {"extra": v[1]}),
                                    response=secret("s", {"password": v[0], "extra": v[1]})),
        v, ["Secret.data", "Secret.stringData"])  # fmt: skip

    v = [secret_value("bootstrap", 0)]
    add("bootstrap-token-secret", event("h-boot", "create", "secrets", namespace="kube-system", name="bootstrap-token-abcdef",
                                        request=secret("bootstrap-token-abcdef", None, {"token-id": "abcdef",
                                                       "token-secret": v[0], "usage-bootstrap-authentication": "true"},
                                                       type_="bootstrap.kubernetes.io/token"), code=201),
        v, ["Secret.stringData"])  # fmt: skip

    v = [secret_value("delcoll", 0)]
    add("secret-deletecollection", event("h-delcoll", "deletecollection", "secrets", name="",
                                         response={"kind": "SecretList", "apiVersion": "v1", "metadata": {},
                                                   "items": [secret("d", {"k": v[0]})]}),
        v, ["Secret.data"])  # fmt: skip

    v = [secret_value("watch", 0)]
    add("secret-watch-event", event("h-watch", "watch", "secrets", name="",
                                    response={"kind": "WatchEvent", "type": "ADDED", "object": secret("w", {"k": v[0]})}),
        v, ["Secret.data"])  # fmt: skip

    v = [secret_value("genericlist", 0)]
    add("secret-in-generic-list", event("h-list-generic", "create", "configmaps", request={
        "kind": "List", "apiVersion": "v1", "items": [{"kind": "ConfigMap", "data": {"a": "b"}},
                                                      secret("g", {"k": v[0]})]}),
        v, ["Secret.data"])  # fmt: skip

    v = [secret_value("badla", 0)]
    broken = secret("s", {"k": v[0]})
    broken["metadata"]["annotations"] = {LA: '{"kind":"Secret","data":{"k":"' + b64(v[0]) + '"'}  # cut JSON
    add("secret-unreadable-last-applied", event("h-badla", "update", "secrets", request=broken),
        v, ["Secret.data", "Secret.last-applied"])  # fmt: skip

    v = [secret_value("wrongkind", 0)]
    add("secret-patch-with-a-wrong-kind", event("h-wrongkind", "patch", "secrets", code=400,
                                                request={"kind": "Secrets", "data": {"k": b64(v[0])}},
                                                response={"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                          "message": "kind mismatch", "code": 400}),
        v, ["Secret.data"])  # fmt: skip

    tok = "eyJhbGciOiJSUzI1NiJ9.HANDMADEcredtokenrequest0Zq7.c2lnbmF0dXJl"
    add("serviceaccount-token-request", event("h-tokreq", "create", "serviceaccounts", subresource="token", name="build",
        request={"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "metadata": {"name": "build"},
                 "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}},
        response={"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                  "metadata": {"name": "build", "namespace": "ns"},
                  "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600},
                  "status": {"token": tok, "expirationTimestamp": "2026-12-01T11:00:00Z"}}, code=201),
        [tok], ["TokenRequest.status.token"])  # fmt: skip

    tok2 = "eyJhbGciOiJSUzI1NiJ9.HANDMADEcredtokenrequestkindless0Zq7.c2ln"
    add("serviceaccount-token-request-kindless", event("h-tokreq2", "create", "serviceaccounts", subresource="token",
        name="build", response={"spec": {"audiences": []}, "status": {"token": tok2}}, code=201),
        [tok2], ["TokenRequest.status.token"])  # fmt: skip

    tok3 = "HANDMADEcredtokenreview0Zq7bearer"
    review = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": None},
              "spec": {"token": tok3, "audiences": ["api"]}}  # fmt: skip
    add("token-review", event("h-review", "create", "tokenreviews", group="authentication.k8s.io", name="",
                              namespace="", request=review,
                              response={**review, "status": {"authenticated": True, "user": {"username": "bob"}}},
                              code=201),
        [tok3], ["TokenReview.spec.token"])  # fmt: skip
    return cases, secrets, expected


CASES, SECRETS, EXPECTED = _cases()

# No credential by the model: must be stored as sent (no over-redaction).
KEPT_VALUES = ["HANDMADEkeptconfigmapvalue0Zq7", "HANDMADEkeptpodenv0Zq7", "HANDMADEkeptcsr0Zq7",
               "HANDMADEkeptstatus0Zq7"]
KEPT = {
    "configmap-apply": event("h-cm", "patch", "configmaps", request={"data": {"k": KEPT_VALUES[0]}}, response={
        "kind": "ConfigMap", "apiVersion": "v1", "data": {"k": KEPT_VALUES[0]},
        "metadata": {"name": "cm", "annotations": {LA: orjson.dumps({"kind": "ConfigMap", "data": {"k": KEPT_VALUES[0]}})
                                                   .decode()}}}),  # fmt: skip
    "pod-env": event("h-pod", "create", "pods", request={"kind": "Pod", "spec": {"containers": [
        {"name": "c", "env": [{"name": "X", "value": KEPT_VALUES[1]}]}]}}, code=201),
    "csr": event("h-csr", "create", "certificatesigningrequests", group="certificates.k8s.io", namespace="",
                 request={"kind": "CertificateSigningRequest", "spec": {"request": b64(KEPT_VALUES[2])}}, code=201),
    # an error answer to kubectl create token: a Status (its `status` is a word), not a TokenRequest
    "token-request-refused": event("h-tokreq-403", "create", "serviceaccounts", subresource="token", code=403,
                                   response={"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403,
                                             "message": KEPT_VALUES[3], "reason": "Forbidden"}),
}


def all_secret_forms() -> list[bytes]:
    return [f for values in SECRETS.values() for v in values for f in forms(v)]


KEPT_VALUE_OF = dict(zip(KEPT, KEPT_VALUES, strict=True))  # each KEPT case's value, which must stay
