"""Shared fixtures. Integration tests use the real Kafka broker (started once per session by
infra/kafka/kafka.sh on a test port) and the real ClickHouse engine (chDB, one path per pytest process,
one database per test)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.samples import SAMPLES

REPO = Path(__file__).resolve().parent.parent
TEST_VAR = REPO / "var" / "test"
KAFKA_PORT = int(os.environ.get("KAUDIT_TEST_KAFKA_PORT", "19092"))


def kafka_env() -> dict[str, str]:
    return {
        **os.environ,
        "KAUDIT_VAR": str(TEST_VAR),
        "KAUDIT_KAFKA_LIBS": str(REPO / "var" / "kafka" / "libs"),  # jars shared with `make up`
        "KAUDIT_KAFKA_PORT": str(KAFKA_PORT),
        "KAUDIT_KAFKA_CONTROLLER_PORT": str(KAFKA_PORT + 1),
        "KAUDIT_KAFKA_BOOTSTRAP": f"127.0.0.1:{KAFKA_PORT}",
        "PYTHON": sys.executable,
    }


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """A real Kafka 4.x broker for the whole session (reused if already running on the test port)."""
    env = kafka_env()
    already_running = _port_open(KAFKA_PORT)
    if already_running:  # a broker (this checkout's or another's) already serves the test port: use it
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": f"127.0.0.1:{KAFKA_PORT}"}).list_topics(timeout=30)
    else:
        subprocess.run(["bash", str(REPO / "infra/kafka/kafka.sh"), "up"], env=env, check=True)
    yield f"127.0.0.1:{KAFKA_PORT}"
    # Stop only a broker this session started (another test run may be using one it started).
    if not already_running and not os.environ.get("KAUDIT_TEST_KEEP_KAFKA"):
        subprocess.run(["bash", str(REPO / "infra/kafka/kafka.sh"), "down"], env=env, check=False)


@pytest.fixture()
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings isolated per test: own topic prefix (topics created), own state folder."""
    from pipeline.kafka.topics import ensure_topics

    s = Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}-",
        var=tmp_path / "var",
        clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}",
    )
    ensure_topics(s)
    return s


@pytest.fixture(scope="session")
def chdb_session_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "db"


@contextlib.contextmanager
def migrated_database(chdb_path: Path, prefix: str = "t"):
    """A migrated ClickHouse database of its own on a chDB path, dropped afterwards: (client, settings, name)."""
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate

    dsn = f"chdb://{chdb_path}"
    admin = open_client(dsn=dsn)
    db = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.command(f"CREATE DATABASE {db}")
    s = Settings(clickhouse_dsn=dsn)
    client = open_client(s, database=db)
    migrate(client, s)
    try:
        yield client, s, db
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")


@pytest.fixture()
def warehouse(chdb_session_path: Path):
    """A migrated ClickHouse database of its own on the session's chDB path; yields (client, settings, name)."""
    with migrated_database(chdb_session_path) as found:
        yield found


def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES.glob("*/*") if p.is_file() and p.suffix != ".md")
