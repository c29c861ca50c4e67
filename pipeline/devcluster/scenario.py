"""Scripted traffic for a local API server: the live demo's stories and the tests' wide coverage scenario.

Everything goes through the real API server as its users: kubectl (as the static-token users admin, alice, bob,
carol, or a ServiceAccount's token) and raw HTTPS (anonymous requests, exec, watches, patch types kubectl hides).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pipeline.devcluster import LocalCluster

DEMO_SA = "system:serviceaccount:default:demo"
# PKCS#10 requests (openssl req; the key was thrown away), base64 of their PEM: CN=system:node:node-1,
# O=system:nodes (a node's identity), and CN=mallory, O=system:masters
NODE_CSR = (
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0KTUlIdk1JR1dBZ0VBTURReEZUQVRCZ05WQkFvTURITjVjM1JsYlRw"
    "dWIyUmxjekViTUJrR0ExVUVBd3dTYzNsegpkR1Z0T201dlpHVTZibTlrWlMweE1Ga3dFd1lIS29aSXpqMENBUVlJS29aSXpqMERB"
    "UWNEUWdBRXJDcEVhR2lqCnFySUxrNnd2eDdLNGc0MUpDYTJ0NnQxVnRlM3JvQjdkOUQyM0FBZTdiamRUZmpncEtuT0REZkN1Tk5S"
    "WWtlOTEKMWZIMkRUdEh3c0FkRHFBQU1Bb0dDQ3FHU000OUJBTUNBMGdBTUVVQ0lRQ2syblF2WlpTc2VpN2pEV1pSOW9iTgpLc1NL"
    "VDdhdE52YUQwSmVPZ1RRWVpnSWdPdFBFNnNXU1hqaGpkd3lGcTAwTXhabW4weHZyRjVxYXM2dFI2T2RNClVEWT0KLS0tLS1FTkQg"
    "Q0VSVElGSUNBVEUgUkVRVUVTVC0tLS0tCg=="
)
MASTERS_CSR = (
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0KTUlIbk1JR05BZ0VBTUNzeEZ6QVZCZ05WQkFvTURuTjVjM1JsYlRw"
    "dFlYTjBaWEp6TVJBd0RnWURWUVFEREFkdApZV3hzYjNKNU1Ga3dFd1lIS29aSXpqMENBUVlJS29aSXpqMERBUWNEUWdBRXJDcEVh"
    "R2lqcXJJTGs2d3Z4N0s0Cmc0MUpDYTJ0NnQxVnRlM3JvQjdkOUQyM0FBZTdiamRUZmpncEtuT0REZkN1Tk5SWWtlOTExZkgyRFR0"
    "SHdzQWQKRHFBQU1Bb0dDQ3FHU000OUJBTUNBMGtBTUVZQ0lRRHFDZ2EwemNGYW10UzFOZk1VZDc3bVIzM1NKcGFJNHJ1WQpIZlJS"
    "Vytqdzd3SWhBTlNrLzZsNFRocSsveUlVNzZIeXhxUitGRW9ZbXEvR21ZYWcySFVabGN3UwotLS0tLUVORCBDRVJUSUZJQ0FURSBS"
    "RVFVRVNULS0tLS0K"
)

POD_SPECS: dict[str, dict[str, Any]] = {
    "plain": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
    "privileged": {"containers": [{"name": "web", "image": "nginx:1.27", "securityContext": {"privileged": True}}]},
    "hostnet": {"hostNetwork": True, "containers": [{"name": "web", "image": "nginx:1.27"}]},
    "hostpath": {
        "containers": [{"name": "web", "image": "nginx:1.27", "volumeMounts": [{"name": "root", "mountPath": "/host"}]}],
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
    },
}


def pod(name: str, ns: str, kind: str = "plain") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": POD_SPECS[kind]}


def sa_token(kc: LocalCluster, name: str, ns: str = "default") -> str:
    """A ServiceAccount and a token for it (TokenRequest: the API server signs it, no controller needed)."""
    if kc.kubectl("-n", ns, "get", "serviceaccount", name, check=False).returncode != 0:
        kc.kubectl("-n", ns, "create", "serviceaccount", name)
    return kc.kubectl("-n", ns, "create", "token", name, "--duration", "1h").stdout.decode().strip()


def apply(kc: LocalCluster, obj: dict[str, Any], user: str = "admin") -> None:
    kc.kubectl("apply", "-f", "-", user=user, input=json.dumps(obj))


def demo_denials(kc: LocalCluster, token: str, times: int = 3) -> int:
    """The demo ServiceAccount lists pods ``times`` times; returns how many were denied (403)."""
    denied = 0
    for _ in range(times):
        status, _ = kc.request("GET", "/api/v1/namespaces/default/pods", token=token)
        denied += status == 403
    return denied


def coverage(kc: LocalCluster, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """A wide scenario: creates, updates, three patch types, deletes, RBAC objects, privileged/hostNetwork/hostPath
    pods, exec, impersonation, anonymous and forbidden requests, a watch. Returns facts for the assertions."""
    facts: dict[str, Any] = {"statuses": {}}

    def note(key: str, status: int) -> None:
        facts["statuses"][key] = status

    say("namespaces, configmaps, a deployment (create, update, three patch types, delete)")
    kc.kubectl("create", "namespace", "team-a")
    kc.kubectl("-n", "team-a", "create", "serviceaccount", "default")
    apply(kc, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "team-a"},
               "data": {"mode": "blue"}})  # fmt: skip
    st, cm = kc.request("GET", "/api/v1/namespaces/team-a/configmaps/settings")
    cm["data"]["mode"] = "green"
    st, _ = kc.request("PUT", "/api/v1/namespaces/team-a/configmaps/settings", body=cm)
    note("update", st)
    base = "/api/v1/namespaces/team-a/configmaps/settings"
    note("patch-json", kc.request("PATCH", base, body=[{"op": "add", "path": "/data/json", "value": "1"}],
                                  content_type="application/json-patch+json")[0])  # fmt: skip
    note("patch-merge", kc.request("PATCH", base, body={"data": {"merge": "1"}},
                                   content_type="application/merge-patch+json")[0])  # fmt: skip
    note("patch-strategic", kc.request("PATCH", base, body={"data": {"strategic": "1"}},
                                       content_type="application/strategic-merge-patch+json")[0])  # fmt: skip
    apply(kc, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "team-a"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": POD_SPECS["plain"]}}})  # fmt: skip
    kc.kubectl("-n", "team-a", "scale", "deployment", "web", "--replicas", "2")
    # a JSON patch that turns the template into a node takeover: host PID namespace and the host's /etc, spelled
    # //etc/. (the API server accepts it; the kernel mounts /etc), and the host network by a copy of a true the
    # API server's defaults put in the stored object (enableServiceLinks): a value no audit event carries
    note("patch-json-workload", kc.request(
        "PATCH", "/apis/apps/v1/namespaces/team-a/deployments/web",
        body=[{"op": "add", "path": "/spec/template/spec/hostPID", "value": True},
              {"op": "add", "path": "/spec/template/spec/volumes", "value": [{"name": "etc", "hostPath": {"path": "//etc/."}}]},
              {"op": "copy", "from": "/spec/template/spec/enableServiceLinks", "path": "/spec/template/spec/hostNetwork"}],
        content_type="application/json-patch+json")[0])  # fmt: skip
    kc.kubectl("-n", "team-a", "delete", "deployment", "web")
    # a PersistentVolume on the host's kubelet directory: any pod that claims it mounts the node, with no hostPath
    apply(kc, {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "node-kubelet"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": "/var/lib/kubelet/pods"}}})  # fmt: skip
    kc.kubectl("delete", "persistentvolume", "node-kubelet", "--wait=false")  # pv-protection: no controller here
    kc.kubectl("-n", "team-a", "delete", "configmap", "settings")

    say("RBAC objects: a wildcard ClusterRole, a cluster-admin binding, a Role and RoleBinding, a system:masters CSR")
    apply(kc, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "everything"},
               "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]})  # fmt: skip
    kc.kubectl("create", "clusterrolebinding", "alice-admin", "--clusterrole", "cluster-admin", "--user", "alice")
    kc.kubectl("-n", "team-a", "create", "role", "pod-reader", "--verb", "get,list,watch", "--resource", "pods")
    kc.kubectl("-n", "team-a", "create", "rolebinding", "bob-reads", "--role", "pod-reader", "--user", "bob")
    # client certificates: a node's identity requested by alice and approved, and system:masters (cluster-admin
    # that no RBAC change revokes), which the CertificateSubjectRestriction admission plugin refuses (403): audited
    for name, request in (("node-1-by-alice", NODE_CSR), ("mallory", MASTERS_CSR)):
        csr = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
               "spec": {"signerName": "kubernetes.io/kube-apiserver-client", "usages": ["client auth"], "request": request}}  # fmt: skip
        note(f"csr-{name}", kc.request("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", body=csr, user="alice")[0])
    kc.kubectl("certificate", "approve", "node-1-by-alice")

    say("pods: plain, privileged, hostNetwork, hostPath (stored, never run: there is no kubelet)")
    for name, kind in (("plain", "plain"), ("priv", "privileged"), ("hostnet", "hostnet"), ("hostpath", "hostpath")):
        apply(kc, pod(name, "team-a", kind), user="alice")

    say("exec and port-forward into a pod (the API server answers: no node; the attempt is audited)")
    note("exec", kc.request("POST", "/api/v1/namespaces/team-a/pods/plain/exec?command=sh&stdin=true&tty=true",
                            user="alice")[0])  # fmt: skip
    # the kubelet's /run through the node proxy: a command in a pod with no pods/exec request (no node here: 404)
    note("node-proxy-run", kc.request("POST", "/api/v1/nodes/node-1/proxy/run/team-a/plain/web?cmd=id", user="alice")[0])

    say("impersonation: admin acts as bob and as a ServiceAccount")
    kc.kubectl("-n", "team-a", "get", "pods", "--as", "bob")
    kc.kubectl("-n", "default", "get", "pods", "--as", DEMO_SA, check=False)

    say("anonymous requests and probes; forbidden requests")
    note("anonymous-namespaces", kc.request("GET", "/api/v1/namespaces", user=None)[0])
    note("anonymous-version", kc.request("GET", "/version", user=None)[0])
    note("anonymous-livez", kc.request("GET", "/livez", user=None)[0])
    note("carol-secrets", kc.request("GET", "/api/v1/namespaces/team-a/secrets", user="carol")[0])
    for _ in range(3):
        kc.request("GET", "/api/v1/namespaces/kube-system/secrets", user="carol")
    token = sa_token(kc, "demo")
    facts["demo_denied"] = demo_denials(kc, token, times=4)

    say("a watch (ResponseStarted, then ResponseComplete when it times out)")
    note("watch", kc.request("GET", "/api/v1/namespaces/team-a/pods?watch=true&timeoutSeconds=1", user="bob")[0])

    say("a secret read, a delete and a namespace delete")
    kc.kubectl("-n", "team-a", "create", "secret", "generic", "db", "--from-literal", "password=hunter2")
    kc.kubectl("-n", "team-a", "get", "secret", "db", "-o", "name", user="alice")
    kc.kubectl("-n", "team-a", "delete", "pod", "priv", user="alice")
    kc.kubectl("delete", "namespace", "team-a", "--wait=false")
    return facts
