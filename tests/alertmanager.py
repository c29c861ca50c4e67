"""Test support for notify: a real Prometheus Alertmanager (built from its Go module by
infra/alertmanager/build.sh, cached under ~/.cache/kaudit/alertmanager) and ``Receiver``, a tiny aiohttp server
in its own thread that records every request (Alertmanager's webhook receiver, a Slack or generic webhook)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
VERSION = (REPO / "infra/alertmanager/versions.env").read_text().split("ALERTMANAGER_VERSION=")[1].split()[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


class Receiver:
    """Records POSTs; answers ``status`` (change it while running to play a failing destination)."""

    def __init__(self, status: int = 200, script: list[int] | None = None) -> None:
        self.status = status
        self.script = list(script or [])  # statuses answered first, in order (then ``status``)
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        with self.lock:
            self.hits.append(Hit(req.path, dict(req.headers), body))
            status = self.script.pop(0) if self.script else self.status
        headers = {"Retry-After": "0.1"} if status == 429 else {}
        return web.Response(status=status, text="ok" if status < 300 else "rejected by test receiver", headers=headers)

    async def _setup(self, port: int) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self, port: int = 0) -> Receiver:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._setup(port), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def snapshot(self, path: str | None = None) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if path is None or h.path == path]


def build_alertmanager() -> Path:
    """The cached binary; builds it the first time (minutes: Go compile). Without Go and without a cached
    binary the notify integration tests skip (like the browser tests without chromium)."""
    cache = Path(os.environ.get("KAUDIT_ALERTMANAGER_CACHE", Path.home() / ".cache/kaudit/alertmanager"))
    binary = cache / VERSION / "bin" / "alertmanager"
    if not binary.exists() and shutil.which("go") is None:
        pytest.skip("Go is needed to build Alertmanager for the notify tests (or run `make alertmanager` elsewhere)")
    subprocess.run(["bash", str(REPO / "infra/alertmanager/build.sh")], check=True, timeout=3600)
    return binary


@pytest.fixture(scope="session")
def alertmanager_bin() -> Path:
    return build_alertmanager()


@contextlib.contextmanager
def running_alertmanager(binary: Path, workdir: Path, webhook_url: str) -> Iterator[str]:
    """A real Alertmanager on loopback whose only receiver is ``webhook_url``: each alert is its own group
    (group_by ['...']), notified once (repeat_interval 1000h), so the webhook sees what Alertmanager forwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "alertmanager.yml"
    cfg.write_text(
        "route:\n  receiver: test\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 1s\n"
        "  repeat_interval: 1000h\nreceivers:\n  - name: test\n    webhook_configs:\n"
        f"      - url: {webhook_url}\n        send_resolved: false\n"
    )
    port = free_port()
    log = open(workdir / "alertmanager.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [str(binary), f"--config.file={cfg}", f"--storage.path={workdir / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=info"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"alertmanager exited {proc.returncode}; see {workdir / 'alertmanager.log'}"
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "alertmanager not ready after 60s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def am_alerts(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=10) as r:  # noqa: S310 - loopback
        return orjson.loads(r.read())
