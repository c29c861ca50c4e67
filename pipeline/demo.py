"""`make demo`: the whole pipeline on the sample audit logs, started from scratch each run.
`make demo-live`: the same pipeline fed by a real local kube-apiserver (infra/control-plane/), a scripted story
(who deleted what; a ServiceAccount's 403s on `list pods`, explained, fixed by `kaudit rbac suggest`), then yours.

Starts Kafka (infra/kafka/kafka.sh), the sink (owner of the embedded warehouse, also serving the query API and
dashboard), a worker and the bridge; replays every sample folder through the webhook as its own cluster with
`kaudit replay`; waits until the warehouse holds every (deduplicated) event; prints the results. The processes
keep running so you can query them; `make demo-stop` stops everything.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson

from pipeline import devcluster
from pipeline.config import REPO_ROOT, get_settings
from pipeline.devcluster import LocalCluster, scenario
from pipeline.models.readers import RawEvent, read_events
from pipeline.samples import SAMPLES

KAUDIT = [sys.executable, "-m", "pipeline.cli"]
SEED_QUERIES = [
    'logtype="Kubernetes Audit Logs" and verb="delete" groupby objectref_resource,username',
    'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" groupby username',
    'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" and username="system:serviceaccount:default:demo"',
]
COMPONENTS = ("bridge", "worker", "sink")


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def demo_dir() -> Path:
    d = get_settings().var / "demo"
    d.mkdir(parents=True, exist_ok=True)
    return d


def kafka(cmd: str) -> None:
    subprocess.run(["bash", str(REPO_ROOT / "infra/kafka/kafka.sh"), cmd], check=True)


def stop_components() -> None:
    for name in COMPONENTS:
        pid_file = demo_dir() / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        pid_file.unlink(missing_ok=True)
        say(f"stopped {name} (pid {pid})")


def start(name: str, args: list[str]) -> subprocess.Popen:
    log = open(demo_dir() / f"{name}.log", "ab")
    proc = subprocess.Popen(KAUDIT + [name, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (demo_dir() / f"{name}.pid").write_text(str(proc.pid))
    say(f"started {name} (pid {proc.pid}, log {demo_dir() / f'{name}.log'})")
    return proc


def wait_http(
    url: str, what: str, procs: dict[str, subprocess.Popen], timeout: float = 90, ca: Path | None = None
) -> None:
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                raise SystemExit(f"demo: {name} exited with {p.returncode}; see {demo_dir() / f'{name}.log'}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"demo: {what} not ready at {url} after {timeout:.0f} s")


def expected_events() -> int:
    """Distinct (cluster=folder, auditID, stage) over the samples: what the warehouse must end up holding."""
    keys = set()
    for folder in sorted(p for p in SAMPLES.iterdir() if p.is_dir()):
        for f in sorted(folder.iterdir()):
            for item in read_events(f.read_bytes()):
                if isinstance(item, RawEvent):
                    keys.add((folder.name, item.event.get("auditID"), item.event.get("stage")))
    return len(keys)


def api_sql(sql: str) -> list[list]:
    s = get_settings()
    req = urllib.request.Request(
        f"http://{s.api_host}:{s.api_port}/api/sql", data=orjson.dumps({"sql": sql}), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        return orjson.loads(r.read())["rows"]


def run_demo() -> int:
    s = get_settings()
    started = time.monotonic()
    stop_components()
    kafka("down")
    for sub in ("kafka/data", "chdb", "shipper"):
        shutil.rmtree(s.var / sub, ignore_errors=True)
    for f in demo_dir().glob("*.log"):
        f.unlink()
    kafka("up")
    procs = {
        "sink": start("sink", []),
        "worker": start("worker", []),
        "bridge": start("bridge", ["--no-auth"]),
    }
    wait_http(f"http://{s.bridge_host}:{s.bridge_port}/readyz", "bridge", procs)
    wait_http(f"http://{s.api_host}:{s.api_port}/api/health", "query API", procs)
    want = expected_events()
    folders = sorted(p for p in SAMPLES.iterdir() if p.is_dir())
    for folder in folders:
        files = [str(f) for f in sorted(folder.iterdir()) if f.is_file()]
        say(f"replaying {folder.name}/ ({len(files)} files) as cluster {folder.name!r}")
        subprocess.run(
            KAUDIT + ["replay", "--url", f"http://{s.bridge_host}:{s.bridge_port}/audit/{folder.name}",
                      "--cluster", folder.name, *files],
            check=True,
        )  # fmt: skip
    say(f"waiting for {want} distinct events (the samples hold {want} distinct (cluster, auditID, stage)) ...")
    deadline = time.monotonic() + 180
    have = -1
    while time.monotonic() < deadline:
        have = api_sql("SELECT count() FROM audit_events")[0][0]
        if have >= want:
            break
        time.sleep(1)
    say(f"warehouse holds {have} events ({time.monotonic() - started:.1f} s since start)")
    print()
    for q in SEED_QUERIES:
        print(f"$ kaudit query '{q}'")
        subprocess.run(KAUDIT + ["query", "--since", "100000d", q], check=False)
        print()
    print("Events per verb (k8s-audit-verb-stats, summed over windows):")
    for verb, n in api_sql("SELECT verb, sum(count) AS n FROM verb_stats GROUP BY verb ORDER BY n DESC"):
        print(f"  {verb:<18} {n:>6}")
    print("Events per status code (k8s-audit-status-stats; 0 = no response status):")
    for code, n in api_sql("SELECT code, sum(count) AS n FROM status_stats GROUP BY code ORDER BY code"):
        print(f"  {code:<18} {n:>6}")
    print("Alerts by rule:")
    for rule, sev, n in api_sql(
        "SELECT rule_id, any(severity), uniqExact(alert_id) AS n FROM alerts GROUP BY rule_id ORDER BY n DESC"
    ):
        print(f"  {rule:<40} {sev:<8} {n:>5}")
    print(
        f"""
The pipeline keeps running:
  bridge     http://{s.bridge_host}:{s.bridge_port}/audit/<cluster>   (POST audit EventLists; /metrics)
  dashboard  http://{s.api_host}:{s.api_port}/#/dashboard?since=all   (the samples are from 2017-2023: "all" shows them)
  query      .venv/bin/kaudit query --since 30d 'verb="delete" groupby objectref_resource,username'
  sql        .venv/bin/kaudit sql 'SELECT cluster, count() FROM audit_events GROUP BY cluster'
  alerts     topic k8s-audit-alerts-json on 127.0.0.1:9092
  logs       {demo_dir()}/*.log
Stop everything with: make demo-stop"""
    )
    return 0 if have >= want else 1


def live_cluster() -> LocalCluster:
    s = get_settings()
    return LocalCluster(state=s.var / "k8s-demo", cluster="local", bridge_url=f"https://127.0.0.1:{s.bridge_port}")


def kaudit_show(*args: str) -> str:
    """Run a kaudit command, echo it and its output (the demo's narration)."""
    print("$ kaudit " + " ".join(shlex.quote(a) for a in args), flush=True)
    out = subprocess.run(KAUDIT + list(args), capture_output=True, text=True)
    print((out.stdout + out.stderr).rstrip() + "\n", flush=True)
    return out.stdout


def wait_rows(sql: str, want: int, what: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n = int(api_sql(sql)[0][0])
        if n >= want:
            return n
        time.sleep(0.5)
    say(f"still waiting for {what} after {timeout:.0f} s ({n} of {want}); continuing")
    return n


def run_live() -> int:
    s = get_settings()
    started = time.monotonic()
    if not devcluster.built():
        say("building kube-apiserver, kubectl and etcd once (8-10 minutes; cached for every clone)")
        devcluster.build()
    kc = live_cluster()
    stop_components()
    kc.down()
    kafka("down")
    for sub in ("kafka/data", "chdb", "shipper", "k8s-demo"):
        shutil.rmtree(s.var / sub, ignore_errors=True)
    for f in demo_dir().glob("*.log"):
        f.unlink()
    kafka("up")
    kc.prepare()
    procs = {
        "sink": start("sink", []),
        "worker": start("worker", []),
        "bridge": start("bridge", ["--tls-cert", str(kc.bridge_cert), "--tls-key", str(kc.bridge_key),
                                   "--tokens-file", str(kc.bridge_tokens_file)]),
    }  # fmt: skip
    wait_http(f"https://127.0.0.1:{s.bridge_port}/readyz", "bridge", procs, ca=kc.ca)
    wait_http(f"http://{s.api_host}:{s.api_port}/api/health", "query API", procs)
    say("starting etcd + kube-apiserver (webhook -> bridge over HTTPS with the cluster's token; log backend too)")
    kc.up()
    (demo_dir() / "k8s-demo.state").write_text(str(kc.state))
    since = "--since=1h"

    print("\n=== 1. Who deleted what ===\n")
    say("admin lets the developers group (alice, bob) work in namespace shop; alice deploys, bob deletes")
    kc.kubectl("create", "namespace", "shop")
    kc.kubectl("-n", "shop", "create", "serviceaccount", "default")
    # a Role of its own: the built-in `edit` is aggregated by kube-controller-manager, which does not run here
    kc.kubectl("-n", "shop", "create", "role", "developer", "--verb", "get,list,watch,create,update,patch,delete",
               "--resource", "deployments.apps,configmaps,pods,services")  # fmt: skip
    kc.kubectl("-n", "shop", "create", "rolebinding", "developers", "--role", "developer", "--group", "developers")
    kc.kubectl("-n", "shop", "create", "deployment", "web", "--image", "nginx:1.27", user="alice")
    kc.kubectl("-n", "shop", "create", "configmap", "web-settings", "--from-literal", "color=blue", user="alice")
    kc.kubectl("-n", "shop", "delete", "deployment", "web", user="bob")
    kc.kubectl("-n", "shop", "delete", "configmap", "web-settings", user="bob")
    wait_rows("SELECT count() FROM audit_events WHERE verb = 'delete' AND username = 'bob'", 2, "bob's deletes")
    kaudit_show("query", since, 'logtype="Kubernetes Audit Logs" and verb="delete" groupby objectref_resource,username')

    print("\n=== 2. A ServiceAccount gets 403 on list pods: see why, fix it, watch the 403s stop ===\n")
    token = scenario.sa_token(kc, "demo")
    denied = scenario.demo_denials(kc, token, times=3)
    say(f"system:serviceaccount:default:demo listed pods 3 times: {denied} answered 403")
    demo_user = scenario.DEMO_SA
    wait_rows(f"SELECT count() FROM audit_events WHERE username = '{demo_user}' AND responsestatus_code = 403",
              denied, "the 403s")  # fmt: skip
    kaudit_show("query", since, 'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" groupby username')
    kaudit_show("rbac", "explain", "--user", demo_user, since)
    role = demo_dir() / "demo-rbac.yaml"
    kaudit_show("rbac", "suggest", "--user", demo_user, since, "-o", str(role))
    print(role.read_text())
    say(f"applying it: kubectl apply -f {role}")
    kc.kubectl("apply", "-f", str(role))
    allowed = 3 - scenario.demo_denials(kc, token, times=3)
    say(f"listed pods 3 more times: {allowed} allowed")
    wait_rows(f"SELECT count() FROM audit_events WHERE username = '{demo_user}' AND responsestatus_code = 200 "
              "AND verb = 'list'", allowed, "the allowed lists")  # fmt: skip
    kaudit_show("query", since, f'username="{demo_user}" and verb="list" groupby responsestatus_code')

    print(
        f"""
Everything keeps running ({time.monotonic() - started:.0f} s so far). Try it yourself:
  export KUBECONFIG={kc.kubeconfig("admin")}   # also alice, bob, carol: {kc.kubeconfig("alice").parent}/
  export PATH={devcluster.bin_dir()}:$PATH
  kubectl create namespace mine && kubectl -n mine create configmap hello --from-literal=a=b && kubectl delete namespace mine
Your actions appear within seconds in the dashboard (refreshing every 10 s):
  dashboard  http://{s.api_host}:{s.api_port}/#/dashboard?since=15m&refresh=10
  query      .venv/bin/kaudit query --since 15m 'username="admin" groupby verb,objectref_resource'
  API server {kc.server} (audit log {kc.audit_log}); logs {demo_dir()}/*.log, {kc.state}/*.log
Stop everything with: make demo-stop"""
    )
    return 0 if denied == 3 and allowed == 3 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", nargs="?", default="run", choices=["run", "live", "stop"])
    args = ap.parse_args()
    if args.action == "stop":
        stop_components()
        if (demo_dir() / "k8s-demo.state").exists():
            live_cluster().down()
            (demo_dir() / "k8s-demo.state").unlink()
        kafka("down")
        return 0
    if args.action == "live":
        return run_live()
    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
