"""Delivery state: per (destination, alert_id), whether it is being sent, was delivered, or was dead-lettered.

Why a local SQLite file and not a compacted Kafka topic: the state is read for every alert before it is queued
(a point lookup) and written once per request; SQLite answers both from one small file with a transaction per
batch, survives kill -9 (WAL; a committed transaction is in the OS page cache) and needs no read-back at startup.
A compacted topic would have to be read to its end on every start and kept in memory. What makes a local file
enough: the alerts topic has one partition, so one notify process is active per group, and offsets are committed
only after every destination resolved an alert, so the state matters only for (a) alerts between delivery and
commit and (b) the same alert id appearing again later (a worker replaying after a crash re-emits identical
alerts). Losing the file (a new host) therefore re-sends at most those; keep it on a persistent volume.

Every call runs on one dedicated thread (SQLite connections are not shared across threads, and the asyncio loop
must never wait on disk).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SENDING, DELIVERED, DEADLETTER = "sending", "delivered", "deadletter"
DONE = (DELIVERED, DEADLETTER)


class DeliveryState:
    def __init__(self, path: Path, retention_days: float = 7.0) -> None:
        self.path = Path(path)
        self.retention = retention_days * 86400
        self._x = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-state")
        self._db: sqlite3.Connection | None = None

    # --- thread side ----------------------------------------------------------------------------------
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process; fsync per checkpoint
        db.execute(
            "CREATE TABLE IF NOT EXISTS delivery (destination TEXT NOT NULL, alert_id TEXT NOT NULL, "
            "status TEXT NOT NULL, updated_at REAL NOT NULL, detail TEXT NOT NULL DEFAULT '', "
            "PRIMARY KEY (destination, alert_id)) WITHOUT ROWID"
        )
        db.execute("CREATE INDEX IF NOT EXISTS delivery_updated ON delivery (updated_at)")
        self._db = db

    def _lookup(self, alert_ids: list[str]) -> dict[str, dict[str, str]]:
        assert self._db is not None
        out: dict[str, dict[str, str]] = {}
        ids = list(dict.fromkeys(alert_ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT alert_id, destination, status FROM delivery WHERE alert_id IN ({','.join('?' * len(chunk))})"
            for aid, dest, status in self._db.execute(q, chunk):
                out.setdefault(aid, {})[dest] = status
        return out

    def _mark(self, destination: str, alert_ids: list[str], status: str, detail: str) -> None:
        assert self._db is not None
        now = time.time()
        with self._db:  # one transaction
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO delivery (destination, alert_id, status, updated_at, detail) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (destination, alert_id) DO UPDATE SET status = excluded.status, "
                "updated_at = excluded.updated_at, detail = excluded.detail",
                [(destination, a, status, now, detail[:2000]) for a in alert_ids],
            )

    def _prune(self) -> int:
        assert self._db is not None
        cur = self._db.execute(
            "DELETE FROM delivery WHERE updated_at < ? AND status != ?", (time.time() - self.retention, SENDING)
        )
        return cur.rowcount

    def _counts(self) -> dict[tuple[str, str], int]:
        assert self._db is not None
        rows = self._db.execute("SELECT destination, status, count(*) FROM delivery GROUP BY 1, 2")
        return {(d, s): n for d, s, n in rows}

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- asyncio side ---------------------------------------------------------------------------------
    async def _call(self, fn, *args):  # noqa: ANN001, ANN202 - thin executor hop
        return await asyncio.get_running_loop().run_in_executor(self._x, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    async def lookup(self, alert_ids: list[str]) -> dict[str, dict[str, str]]:
        """alert_id -> {destination: status} for the ids that have any state."""
        return await self._call(self._lookup, alert_ids)

    async def mark(self, destination: str, alert_ids: list[str], status: str, detail: str = "") -> None:
        await self._call(self._mark, destination, alert_ids, status, detail)

    async def prune(self) -> int:
        return await self._call(self._prune)

    async def counts(self) -> dict[tuple[str, str], int]:
        return await self._call(self._counts)

    async def close(self) -> None:
        await self._call(self._close)
        self._x.shutdown(wait=True)
