"""Open clickhouse-connect from a DSN: ``chdb:///abs/path`` (embedded, the default) or ``http://host:8123/db``.

Only one process at a time may open a chDB path. In embedded mode the process that owns the path (the
sink) also serves queries over HTTP (``pipeline.warehouse.api``); other processes go through that API.
Each thread should use its own client (chDB clients are not safe to share while streaming).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from pipeline.config import Settings, get_settings

# Settings every session gets: synchronous inserts (26.2 turned async_insert on by default) and
# insert deduplication kept on so retried identical blocks are dropped.
SESSION_SETTINGS: dict[str, Any] = {"async_insert": 0}

_lock = threading.Lock()
_opened_here: set[Path] = set()  # chDB paths this process has opened (clients of one process share the engine)


class WarehouseLockedError(RuntimeError):
    """Another process holds the embedded chDB path."""


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb:")


def open_client(s: Settings | None = None, dsn: str | None = None, reader: bool = False, **kwargs: Any) -> Client:
    """``reader``: a client that only reads (no writer session settings: a readonly=1 reader profile refuses them).
    A writer of a cluster layout (``Settings.clickhouse_cluster``) also gets ``CLUSTER_WRITE_SETTINGS``: its inserts
    into Distributed tables return once the shards stored them (what the sink commits Kafka offsets after)."""
    s = s or get_settings()
    dsn = dsn or s.effective_clickhouse_dsn
    settings = {**({} if reader else SESSION_SETTINGS), **kwargs.pop("settings", {})}
    if s.clickhouse_cluster.strip() and not reader and not is_embedded(dsn):
        from pipeline.warehouse.migrations import CLUSTER_WRITE_SETTINGS

        settings = {**CLUSTER_WRITE_SETTINGS, **settings}
    if is_embedded(dsn):
        path = Path(dsn[len("chdb://") :])
        path.mkdir(parents=True, exist_ok=True)
        with _lock:
            if path not in _opened_here and locked_by_other_process(path):
                raise WarehouseLockedError(_locked_message(path))
            try:
                client = clickhouse_connect.get_client(dsn=dsn, settings=settings, **kwargs)
                _opened_here.add(path)
                return client
            except Exception as exc:  # noqa: BLE001
                text = str(exc)
                # chDB prints "Cannot lock file ... (Code 76)" to stderr; the exception says Code 36.
                if any(m in text for m in ("Cannot lock file", "already running", "Code: 76", "Error initializing EmbeddedServer")):
                    raise WarehouseLockedError(_locked_message(path)) from exc
                raise
    return clickhouse_connect.get_client(dsn=dsn, settings=settings, **kwargs)


def _locked_message(path: Path) -> str:
    return (
        f"the embedded warehouse {path} is open in another process (the sink owns it); "
        "query it through that process's API (KAUDIT_API_URL) or use a ClickHouse server DSN"
    )


def locked_by_other_process(path: Path) -> bool:
    """True if another process holds the chDB folder (ClickHouse flock()s <path>/status while open).

    Checked before opening so that a locked path gives one clear error instead of chDB's stderr noise.
    """
    status = path / "status"
    if not status.exists():
        return False
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
