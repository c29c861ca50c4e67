"""Test support for the real kube-apiserver: the local control plane (pipeline.devcluster) feeding a real kaudit
pipeline (bridge over TLS with the cluster's token, worker, sink into chDB, all as processes) on the test broker.

    with live_pipeline(settings, tmp_path) as lp:      # bridge + worker + sink, bridge on HTTPS
        kc = lp.cluster                                # LocalCluster, API server up, webhook -> bridge
        kc.kubectl("get", "pods")
        lp.wait_stored(keys)                           # until the warehouse holds these (auditID, stage)
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline import devcluster
from pipeline.config import Settings
from pipeline.devcluster import LocalCluster
from pipeline.query.execute import run as execute

REPO = Path(__file__).resolve().parent.parent


def free_port(span: int = 1) -> int:
    """A free port p such that p-span+1..p are free too (etcd takes the two ports below the API server's)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p - span < 1024:
            continue
        ok = True
        for q in range(p - span + 1, p):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
        if ok:
            return p
    raise RuntimeError("no free port range")


def require_binaries() -> None:
    """Build kube-apiserver, kubectl and etcd if the cache lacks them (`make test` builds them first)."""
    if devcluster.built():
        return
    if not os.environ.get("KAUDIT_TEST_BUILD_K8S", "1") == "1":
        pytest.skip("kube-apiserver not built and KAUDIT_TEST_BUILD_K8S=0")
    devcluster.build()


def component_env(s: Settings, api_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAUDIT_")}
    env.update({
        "KAUDIT_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "KAUDIT_TOPIC_PREFIX": s.topic_prefix,
        "KAUDIT_CLICKHOUSE_DSN": s.clickhouse_dsn, "KAUDIT_VAR": str(s.var), "KAUDIT_API_PORT": str(api_port),
        "KAUDIT_API_URL": "", "KAUDIT_RAW_PARTITIONS": str(s.raw_partitions), "PYTHONUNBUFFERED": "1",
        "KAUDIT_MAX_MESSAGE_BYTES": str(s.max_message_bytes),
    })  # fmt: skip
    return env


@dataclass
class LivePipeline:
    settings: Settings
    cluster: LocalCluster
    api_port: int
    bridge_port: int
    logs: Path
    procs: dict[str, subprocess.Popen]

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"{name} exited with {p.returncode}:\n{tail}")

    def sql(self, text: str) -> list[list[Any]]:
        return execute(Settings(api_url=f"http://127.0.0.1:{self.api_port}"), sql=text)["rows"]

    def query(self, q: str, since: str = "1d") -> dict[str, Any]:
        return execute(Settings(api_url=f"http://127.0.0.1:{self.api_port}"), query=q, qargs={"since": since})

    def stored_keys(self, cluster: str | None = None) -> set[tuple[str, str]]:
        c = cluster or self.cluster.cluster
        rows = self.sql(f"SELECT auditid, stage FROM audit_events WHERE cluster = '{c}'")
        return {(r[0], r[1]) for r in rows}

    def wait_stored(self, want: set[tuple[str, str]], cluster: str | None = None, timeout: float = 90) -> set:
        """Until the warehouse holds every key of ``want`` for the cluster; returns what it holds then."""
        deadline = time.monotonic() + timeout
        have: set = set()
        while time.monotonic() < deadline:
            self.check_alive()
            have = self.stored_keys(cluster)
            if want <= have:
                return have
            time.sleep(0.5)
        missing = sorted(want - have)[:5]
        raise AssertionError(f"{len(want - have)} of {len(want)} events never stored, e.g. {missing}")


def start(name: str, args: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen:
    log = (logs / f"{name}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", name, *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def wait_port(port: int, proc: subprocess.Popen, name: str, logs: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited: {(logs / f'{name}.log').read_text(errors='replace')[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"{name} not listening on {port} after {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def live_pipeline(
    settings: Settings, tmp_path: Path, *, cluster: str = "local", webhook: str = "token",
    policy: Path | None = None, log_maxsize_mb: int = 100, worker_args: tuple[str, ...] = (),
) -> Iterator[LivePipeline]:  # fmt: skip
    """A kube-apiserver whose webhook posts to a bridge over HTTPS (token or client certificate, as the shipped
    kubeconfigs say), with a worker and a sink into the test's chDB; everything stopped afterwards."""
    require_binaries()
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    bridge_port, api_port, kube_port = free_port(), free_port(), free_port(span=3)
    kc = LocalCluster(
        state=tmp_path / "k8s", port=kube_port, cluster=cluster, bridge_url=f"https://127.0.0.1:{bridge_port}",
        webhook=webhook, policy=policy, log_maxsize_mb=log_maxsize_mb,
    )  # fmt: skip
    kc.prepare()
    env = component_env(settings, api_port)
    auth = ["--client-ca", str(kc.ca)] if webhook == "cert" else ["--tokens-file", str(kc.bridge_tokens_file)]
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["sink"] = start("sink", ["--group", f"{settings.topic_prefix}sink", "--max-seconds", "0.3"], env, logs)
        procs["worker"] = start("worker", list(worker_args), env, logs)
        procs["bridge"] = start("bridge", ["--port", str(bridge_port), "--tls-cert", str(kc.bridge_cert),
                                           "--tls-key", str(kc.bridge_key), *auth], env, logs)  # fmt: skip
        wait_port(bridge_port, procs["bridge"], "bridge", logs)
        wait_port(api_port, procs["sink"], "sink", logs)
        kc.up()
        lp = LivePipeline(settings, kc, api_port, bridge_port, logs, procs)
        yield lp
    finally:
        with contextlib.suppress(Exception):
            kc.down()
        for p in procs.values():
            stop(p)
