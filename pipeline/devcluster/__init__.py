"""A real local Kubernetes control plane (etcd + kube-apiserver on loopback) for the live demo and the tests.

``infra/control-plane/control-plane.sh`` does the work (build once into a cache, certificates, static-token users,
the audit webhook pointed at a kaudit bridge over TLS and the log backend at once); this module drives it from
Python and speaks to the API server as its users: kubectl, or raw HTTPS with a user's bearer token.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT
from pipeline.models import deepjson

SCRIPTS = REPO_ROOT / "infra" / "control-plane"
USERS = ("admin", "alice", "bob", "carol")


def versions() -> dict[str, str]:
    """The pinned versions (infra/control-plane/versions.env, the one place they are named)."""
    out = {}
    for line in (SCRIPTS / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def bin_dir() -> Path:
    cache = Path(os.environ.get("KAUDIT_K8S_CACHE") or Path.home() / ".cache" / "kaudit" / "k8s")
    return cache / versions()["KUBERNETES_VERSION"] / "bin"


def built() -> bool:
    return all((bin_dir() / b).exists() for b in ("kube-apiserver", "kubectl", "etcd"))


def build() -> None:
    """Build the binaries if the cache lacks them (8-10 minutes the first time; progress on stderr)."""
    subprocess.run(["bash", str(SCRIPTS / "build.sh")], check=True)


@dataclass
class LocalCluster:
    """One control plane: its state folder, ports and the webhook's target. ``up()`` starts it, ``down()`` stops it.

    ``webhook`` is ``token`` or ``cert`` (infra/kubernetes/webhook-kubeconfig-*.yaml as shipped, with only the
    server URL and file paths filled in), ``none``, or a kubeconfig path. ``policy`` defaults to the project's
    infra/kubernetes/audit-policy.yaml."""

    state: Path
    port: int = 6443
    cluster: str = "local"
    bridge_url: str = "https://127.0.0.1:8765"
    webhook: str = "token"
    policy: Path | None = None
    batch_wait: str = "1s"
    log_maxsize_mb: int = 100
    extra_args: list[str] = field(default_factory=list)

    # --- lifecycle ---------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "KAUDIT_K8S_STATE": str(self.state),
            "KAUDIT_K8S_PORT": str(self.port),
            "KAUDIT_K8S_CLUSTER": self.cluster,
            "KAUDIT_K8S_BRIDGE_URL": self.bridge_url,
            "KAUDIT_K8S_WEBHOOK": self.webhook,
            "KAUDIT_K8S_BATCH_WAIT": self.batch_wait,
            "KAUDIT_K8S_LOG_MAXSIZE": str(self.log_maxsize_mb),
            "KAUDIT_K8S_EXTRA_ARGS": " ".join(self.extra_args),
        }
        if self.policy:
            env["KAUDIT_K8S_POLICY"] = str(self.policy)
        return env

    def _script(self, action: str) -> None:
        subprocess.run(["bash", str(SCRIPTS / "control-plane.sh"), action], env=self.env(), check=True)

    def prepare(self) -> None:
        """Certificates, tokens and kubeconfigs only (what a bridge needs before the API server starts)."""
        self._script("prepare")

    def up(self) -> None:
        self._script("up")

    def down(self) -> None:
        self._script("down")

    def restart(self, policy: Path | None = None) -> None:
        """Stop the API server (etcd keeps the objects) and start it again, e.g. with another audit policy."""
        if policy is not None:
            self.policy = policy
        self._script("stop-apiserver")
        self._script("up")

    # --- files -------------------------------------------------------------------------------------
    @property
    def pki(self) -> Path:
        return self.state / "pki"

    @property
    def ca(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def bridge_cert(self) -> Path:
        return self.pki / "bridge.crt"

    @property
    def bridge_key(self) -> Path:
        return self.pki / "bridge.key"

    @property
    def bridge_tokens_file(self) -> Path:
        return self.state / "bridge-tokens.yaml"

    @property
    def audit_log(self) -> Path:
        return self.state / "audit" / "audit.log"

    def audit_log_files(self) -> list[Path]:
        """The current log and its rotated backups (audit-<time>.log), oldest first."""
        rotated = sorted(p for p in self.audit_log.parent.glob("audit-*.log"))
        return [*rotated, self.audit_log] if self.audit_log.exists() else rotated

    def logged_events(self) -> list[dict[str, Any]]:
        """Every event the API server wrote to its own log (all rotated files), in order."""
        out = []
        for f in self.audit_log_files():
            for line in f.read_bytes().splitlines():
                if line.strip():
                    out.append(deepjson.loads(line, check=True))  # a PATCH body is logged as deep as it came
        return out

    def kubeconfig(self, user: str = "admin") -> Path:
        return self.state / "kubeconfig" / user

    def token(self, user: str) -> str:
        for line in (self.state / "tokens.csv").read_text().splitlines():
            parts = line.split(",")
            if parts[1] == user:
                return parts[0]
        raise KeyError(user)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- talking to it -----------------------------------------------------------------------------
    def kubectl(
        self, *args: str, user: str = "admin", token: str | None = None, input: str | bytes | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:  # fmt: skip
        cmd = [str(bin_dir() / "kubectl"), "--kubeconfig", str(self.kubeconfig(user))]
        if token is not None:
            cmd += ["--token", token]
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run([*cmd, *args], input=data, capture_output=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} as {user}: {proc.stderr.decode(errors='replace').strip()}")
        return proc

    def request(
        self, method: str, path: str, *, user: str | None = "admin", token: str | None = None,
        body: Any = None, content_type: str = "application/json", headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:  # fmt: skip
        """Raw HTTPS as a user (``user=None`` and no token: anonymous). Returns (status, parsed JSON or text)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        hdrs = {"Accept": "application/json", **(headers or {})}
        bearer = token if token is not None else (self.token(user) if user else None)
        if bearer:
            hdrs["Authorization"] = f"Bearer {bearer}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = content_type
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=60) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, deepjson.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def wait_for(self, predicate: Any, timeout: float = 60, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = predicate()
            if got:
                return got
            time.sleep(0.3)
        raise TimeoutError(f"{what} not reached in {timeout:.0f} s")
