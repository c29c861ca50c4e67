"""A realistic volume scenario for a local API server (pipeline.devcluster): controller-like background traffic
(service accounts in loops of list/get and short watches, over HTTPS with their own tokens) plus the requests
detection exists for (a privileged pod, an exec, deletes, an RBAC change, impersonation, Secrets reads,
forbidden bursts, anonymous probes). Used by the policy test (small) and ``make bench-policy`` (larger)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.devcluster import LocalCluster
from pipeline.devcluster.scenario import apply, pod

NS = "ctrl"
READER = "secret-reader"


@dataclass
class Controllers:
    tokens: dict[str, str] = field(default_factory=dict)  # SA name -> bearer token
    reader_token: str = ""


def setup(kc: LocalCluster, n: int = 3, objects: int = 5) -> Controllers:
    """Namespace, n controller ServiceAccounts allowed to read pods/configmaps/services, one that may read Secrets,
    and a few objects for them to read."""
    kc.kubectl("create", "namespace", NS)
    kc.kubectl("-n", NS, "create", "serviceaccount", "default", check=False)
    kc.kubectl("-n", NS, "create", "role", "reads", "--verb", "get,list,watch", "--resource", "pods,configmaps,services")
    kc.kubectl("-n", NS, "create", "role", "secret-reads", "--verb", "get,list", "--resource", "secrets")
    out = Controllers()
    for i in range(n):
        name = f"reconciler-{i}"
        kc.kubectl("-n", NS, "create", "serviceaccount", name)
        kc.kubectl("-n", NS, "create", "rolebinding", name, "--role", "reads", "--serviceaccount", f"{NS}:{name}")
        out.tokens[name] = kc.kubectl("-n", NS, "create", "token", name, "--duration", "2h").stdout.decode().strip()
    kc.kubectl("-n", NS, "create", "serviceaccount", READER)
    kc.kubectl("-n", NS, "create", "rolebinding", READER, "--role", "secret-reads", "--serviceaccount", f"{NS}:{READER}")
    out.reader_token = kc.kubectl("-n", NS, "create", "token", READER, "--duration", "2h").stdout.decode().strip()
    for i in range(objects):
        apply(kc, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"cfg-{i}", "namespace": NS},
                   "data": {"settings": "x" * 400}})  # fmt: skip
    kc.kubectl("-n", NS, "create", "secret", "generic", "db", "--from-literal", "password=hunter2")
    return out


def controller_loop(kc: LocalCluster, ctl: Controllers, rounds: int, workers: int = 6) -> int:
    """Each controller, per round: list pods, list configmaps, get one configmap, list services, and a 1 s watch
    of pods; the Secret reader lists Secrets every other round. Returns the number of requests."""
    base = f"/api/v1/namespaces/{NS}"
    jobs: list[tuple[str, str]] = []
    for r in range(rounds):
        for token in ctl.tokens.values():
            jobs += [(f"{base}/pods", token), (f"{base}/configmaps", token), (f"{base}/configmaps/cfg-{r % 5}", token),
                     (f"{base}/services", token), (f"{base}/pods?watch=true&timeoutSeconds=1", token)]  # fmt: skip
        if r % 2 == 0:
            jobs.append((f"{base}/secrets", ctl.reader_token))
    with ThreadPoolExecutor(workers) as pool:
        statuses = list(pool.map(lambda j: kc.request("GET", j[0], token=j[1])[0], jobs))
    bad = [s for s in statuses if s != 200]
    if bad:
        raise RuntimeError(f"controller loop: {len(bad)} of {len(jobs)} requests failed (statuses {sorted(set(bad))})")
    return len(jobs)


def detections(kc: LocalCluster, tag: str) -> dict[str, Any]:
    """The requests alert rules exist for, with names unique per ``tag`` (the scenario runs twice)."""
    facts: dict[str, int] = {}
    apply(kc, pod(f"priv-{tag}", NS, "privileged"))  # privileged-pod
    facts["exec"] = kc.request("POST", f"/api/v1/namespaces/{NS}/pods/priv-{tag}/exec?command=sh&stdin=true")[0]
    kc.kubectl("-n", NS, "delete", "pod", f"priv-{tag}", "--wait=false")  # risky-verb
    kc.kubectl("-n", NS, "create", "rolebinding", f"bob-{tag}", "--role", "reads", "--user", "bob")  # rbac-changed
    kc.kubectl("-n", NS, "get", "pods", "--as", "bob")  # impersonation
    for _ in range(25):  # forbidden-burst (threshold 10 per minute: 25 cannot split under it)
        kc.request("GET", "/api/v1/namespaces/kube-system/secrets", user="carol")
    for path in ("/livez", "/readyz", "/healthz", "/version"):
        kc.request("GET", path, user=None)
    kc.kubectl("-n", NS, "get", "secret", "db", "-o", "name", user="admin")
    # binding-then-secret-read: a binding granting bob Secrets, then bob reads one (in every run, not only setup)
    kc.kubectl("-n", NS, "create", "rolebinding", f"bob-secrets-{tag}", "--role", "secret-reads", "--user", "bob")
    kc.kubectl("-n", NS, "get", "secret", "db", "-o", "name", user="bob")
    return facts


def run(kc: LocalCluster, ctl: Controllers, rounds: int, tag: str) -> tuple[float, float, int]:
    """One pass of the scenario; returns (start, end) epoch seconds and the number of controller requests. It starts
    just after a whole second: callers measure whole-second windows, and the second before the start may hold the
    end of the setup (a Secret created by a user would read as this run's secret-changed alert)."""
    time.sleep(1.001 - time.time() % 1)
    t0 = time.time()
    n = controller_loop(kc, ctl, rounds)
    detections(kc, tag)
    return t0, time.time(), n


def measure(sql: Any, cluster: str, t0: float, t1: float) -> dict[str, Any]:
    """Stored events, their bytes and the alert rules that fired for requests received in [t0, t1)."""
    rng = (f"cluster = '{cluster}' AND request_received_ts >= fromUnixTimestamp64Micro({int(t0 * 1e6)}, 'UTC') "
           f"AND request_received_ts < fromUnixTimestamp64Micro({int(t1 * 1e6)}, 'UTC')")  # fmt: skip
    ((events, size),) = sql(f"SELECT count(), sum(event_bytes) FROM audit_events WHERE {rng}")
    rules = sql(f"SELECT DISTINCT rule_id FROM alerts WHERE cluster = '{cluster}' AND ts >= fromUnixTimestamp64Micro("
                f"{int(t0 * 1e6)}, 'UTC') AND ts < fromUnixTimestamp64Micro({int(t1 * 1e6)}, 'UTC') ORDER BY 1")  # fmt: skip
    return {"events": int(events), "bytes": int(size or 0), "rules": [r[0] for r in rules]}


def write_policy(text: str, path: Path) -> Path:
    path.write_text(text)
    return path
