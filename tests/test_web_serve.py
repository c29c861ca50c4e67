"""`kaudit serve`: refuses an open bind without auth, says where the dashboard is when the sink owns the
embedded warehouse (exit 2), serves the dashboard over its own chDB path, and enforces token / basic auth."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO
from tests.test_web_support import ServerThread, get, loaded  # noqa: F401 - fixtures

KAUDIT = [sys.executable, "-m", "pipeline.cli", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refuses_non_loopback_without_auth(tmp_path):
    r = subprocess.run([*KAUDIT, "--host", "0.0.0.0", "--clickhouse", f"chdb://{tmp_path}/db"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2 and "without authentication" in r.stderr
    assert not (tmp_path / "db").exists()  # refused before opening anything


def test_locked_embedded_path_points_to_the_sink_and_exits_2(tmp_path):
    path = tmp_path / "chdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipeline.warehouse.client import open_client; "
         f"c = open_client(dsn='chdb://{path}'); c.command('SELECT 1'); print('ready', flush=True); time.sleep(120)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        env = {**os.environ, "KAUDIT_API_URL": "http://127.0.0.1:18080"}
        r = subprocess.run([*KAUDIT, "--port", str(free_port()), "--clickhouse", f"chdb://{path}"],
                           cwd=REPO, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert "already serves the dashboard" in r.stderr and "http://127.0.0.1:18080/" in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_serve_process_answers_over_its_own_warehouse(tmp_path):
    port = free_port()
    proc = subprocess.Popen([*KAUDIT, "--port", str(port), "--clickhouse", f"chdb://{tmp_path}/chdb"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert "kaudit dashboard: http://127.0.0.1:" in proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/api/health", timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        assert get(base, "/api/health")["ok"] is True
        # a fresh warehouse is migrated and shows an empty dashboard, not errors
        w = get(base, "/api/dashboard/widgets", since="24h")["widgets"]
        assert all("error" not in v for v in w.values()), w
        assert w["actions"]["totals"] == {}
        assert "chart.umd.min.js" in get(base, "/")
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("mode", ["token", "basic"])
def test_auth(loaded, mode):  # noqa: F811
    from pipeline.commands.serve import build_app

    app = build_app(loaded.settings, loaded.warehouse, token="s3cret" if mode == "token" else "",
                    basic="admin:pw" if mode == "basic" else "")  # fmt: skip
    srv = ServerThread(app)
    try:
        if mode == "token":
            assert "kaudit" in get(srv.url, "/")  # the page itself holds no data
            get(srv.url, "/api/dashboard/clusters", expect=401)
            get(srv.url, "/api/dashboard/clusters", expect=401, headers={"Authorization": "Bearer wrong"})
            ok = get(srv.url, "/api/dashboard/clusters", headers={"Authorization": "Bearer s3cret"})
        else:
            get(srv.url, "/", expect=401)
            get(srv.url, "/api/dashboard/clusters", expect=401)
            auth = "Basic " + base64.b64encode(b"admin:pw").decode()
            ok = get(srv.url, "/api/dashboard/clusters", headers={"Authorization": auth})
        assert "audit2rbac" in ok["clusters"]
    finally:
        srv.stop()
