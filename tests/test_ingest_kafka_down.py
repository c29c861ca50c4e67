"""Kafka stops while batches arrive: the bridge answers 503 + Retry-After (never 2xx for data not in Kafka), is not
ready, and recovers when Kafka returns. Runs its own broker (own port and state folder) so others are undisturbed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from pipeline import config
from pipeline.config import Settings
from pipeline.ingest.bridge import Authenticator, Bridge, BridgeOptions
from pipeline.ingest.bridge.threaded import bridge_thread
from pipeline.ingest.testing import read_topic
from tests.conftest import REPO

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch(i: int) -> bytes:
    ev = {"auditID": f"down-{i}", "stage": "ResponseComplete", "stageTimestamp": "2026-01-01T00:00:00.000000Z"}
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": [ev]})


def post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


def test_kafka_outage_503_and_recovery(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ, "KAUDIT_VAR": str(tmp_path / "kvar"), "KAUDIT_KAFKA_PORT": str(port),
        "KAUDIT_KAFKA_CONTROLLER_PORT": str(free_port()), "KAUDIT_KAFKA_LIBS": str(REPO / "var/kafka/libs"),
        "PYTHON": sys.executable, "KAUDIT_KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
    }  # fmt: skip
    kafka = ["bash", str(REPO / "infra/kafka/kafka.sh")]
    subprocess.run([*kafka, "up"], env=env, check=True, capture_output=True)
    s = Settings(kafka_bootstrap=f"127.0.0.1:{port}", var=tmp_path / "var", bridge_ack_timeout=2.0)
    bridge = Bridge(s, Authenticator(enabled=False), BridgeOptions(retry_after=1, readiness_interval=0.3))
    acked: list[bytes] = []
    try:
        with bridge_thread(bridge) as url:
            u = f"{url}/audit/outage"
            assert wait_for(lambda: ready(url), 30)
            assert post(u, batch(0))[0] == 200
            acked.append(batch(0))
            subprocess.run([*kafka, "stop"], env=env, check=True, capture_output=True)
            for i in (1, 2):
                code, hdrs = post(u, batch(i))
                assert code == 503 and hdrs["Retry-After"] == "1"
            assert wait_for(lambda: not ready(url), 15)
            subprocess.run([*kafka, "up"], env=env, check=True, capture_output=True)
            assert wait_for(lambda: ready(url), 60)

            def accepted() -> bool:  # the apiserver would resend until 2xx
                if post(u, batch(3))[0] == 200:
                    acked.append(batch(3))
                    return True
                return False

            assert wait_for(accepted, 60)
            assert post(u, batch(4))[0] == 200
            acked.append(batch(4))
            metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
            assert 'kaudit_bridge_rejections_total{reason="kafka_timeout"}' in metrics
        recs = read_topic(s.kafka_bootstrap, s.topic(config.RAW), timeout=60)
        values = [r.value for r in recs]
        for body in acked:  # every 2xx batch is in Kafka (503 ones may be too: the worker deduplicates)
            assert body in values
        assert set(values) <= {batch(i) for i in range(5)}
    finally:
        subprocess.run([*kafka, "down"], env=env, check=False, capture_output=True)
