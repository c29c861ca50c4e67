"""The ingestion commands end to end: `kaudit bridge` as a process (SIGTERM drains), `kaudit replay`, `kaudit ship`."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from pipeline import config
from pipeline.config import Settings, get_settings
from pipeline.ingest.replay import build_bodies
from pipeline.ingest.testing import read_topic
from tests.conftest import REPO, SAMPLES

pytestmark = pytest.mark.kafka


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bridge_process_replay_and_sigterm(settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "KAUDIT_TOPIC_PREFIX": settings.topic_prefix, "KAUDIT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("clusters:\n  demo: sekret\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "bridge", "--port", str(port), "--tokens-file", str(tokens)],
        env=env, cwd=REPO, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        files = sorted(str(p) for p in (SAMPLES / "audit2rbac").iterdir())
        # replay in the background and stop the bridge while batches may be in flight
        result: dict = {}

        def replay() -> None:
            result["rc"] = subprocess.run(
                [sys.executable, "-m", "pipeline.cli", "replay", "--url", f"http://127.0.0.1:{port}/audit",
                 "--cluster", "demo", "--token", "sekret", "--batch-size", "50", "--concurrency", "8", *files],
                env=env, cwd=REPO, capture_output=True, text=True,
            )  # fmt: skip

        t = threading.Thread(target=replay)
        t.start()
        t.join(60)
        out = result["rc"]
        assert out.returncode == 0, out.stderr
        assert "794/794 events in 16/16 batches accepted" in out.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log = proc.stderr.read()
        assert "finishing in-flight batches" in log and "producer flushed and closed" in log
    finally:
        if proc.poll() is None:
            proc.kill()
    recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW), expect=16)
    assert sorted(r.value for r in recs) == sorted(b for _, b in build_bodies(files, 50))


def test_ship_once_command(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.cli import main

    lines = (SAMPLES / "openshift" / "forward_to_syslog_test-lines.jsonl").read_bytes()
    gz = tmp_path / "old.log.gz"
    gz.write_bytes(gzip.compress(lines + b"garbage\n"))
    for k, v in {"KAUDIT_TOPIC_PREFIX": settings.topic_prefix, "KAUDIT_VAR": str(settings.var),
                 "KAUDIT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    try:
        assert main(["ship", "--once", "--cluster", "old", str(gz)]) == 0
        assert main(["ship", "--once", "--cluster", "Bad!", str(gz)]) == 2
        assert main(["ship", "--once", "--cluster", "old", str(tmp_path / "missing.log")]) == 2
    finally:
        get_settings.cache_clear()
    recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW))
    assert b"".join(r.value for r in recs) == lines
    [dead] = read_topic(settings.kafka_bootstrap, settings.topic(config.DEADLETTER))
    n = lines.count(b"\n")
    assert lines.endswith(b"\n") and orjson.loads(dead.value)["origin"] == f"{gz}:{n + 1}"
    assert (settings.var / "shipper" / "old").is_dir()
