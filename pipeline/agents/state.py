"""Per-partition worker state: which (cluster, auditID, stage) were seen at which raw offset, which alerts were
emitted, and threshold-rule counts. Rebuilt from the events topic after a (re)assignment so that a replayed
raw record produces exactly the outputs it produced the first time (see README-DEV-CONTRACTS.md)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("kaudit.worker.state")


class SeenIndex:
    """key -> first raw offset it was seen at, forgotten ``horizon`` seconds (wall clock) after first sight.

    ``first_at(key, offset)`` answers "is this the first sighting, counting a replay of the same record as
    first?": True for an unknown key or one first seen at ``offset`` or later (a replay after a crash)."""

    __slots__ = ("horizon", "_first", "_order")

    def __init__(self, horizon: float) -> None:
        self.horizon = horizon
        self._first: dict[Hashable, int] = {}
        self._order: deque[tuple[float, Hashable]] = deque()

    def __len__(self) -> int:
        return len(self._first)

    def first_at(self, key: Hashable, offset: int, now: float) -> bool:
        first = self._first.get(key)
        if first is None:
            self._first[key] = offset
            self._order.append((now, key))
            return True
        if first >= offset:
            self._first[key] = offset
            return True
        return False

    def add(self, key: Hashable, offset: int, seen_at: float) -> None:
        """Record a sighting read back from the output topic (rebuild)."""
        first = self._first.get(key)
        if first is None:
            self._first[key] = offset
            self._order.append((seen_at, key))
        elif offset < first:
            self._first[key] = offset

    def expire(self, now: float) -> int:
        limit = now - self.horizon
        order, first = self._order, self._first
        n = 0
        while order and order[0][0] < limit:
            _, key = order.popleft()
            first.pop(key, None)
            n += 1
        return n


@dataclass
class PartitionState:
    """Everything the worker remembers about one raw partition."""

    partition: int
    horizon: float
    seen: SeenIndex = field(init=False)
    alerts: SeenIndex = field(init=False)
    # (rule_id, cluster, group_key, window_start) -> [count, last update wall time]
    thresholds: dict[tuple[str, str, str, int], list[Any]] = field(default_factory=dict)
    records: int = 0
    last_offset: int = -1

    def __post_init__(self) -> None:
        self.seen = SeenIndex(self.horizon)
        self.alerts = SeenIndex(self.horizon)

    def count_threshold(self, key: tuple[str, str, str, int], now: float) -> int:
        slot = self.thresholds.get(key)
        if slot is None:
            slot = self.thresholds[key] = [0, now]
        slot[0] += 1
        slot[1] = now
        return slot[0]

    def expire(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.seen.expire(now)
        self.alerts.expire(now)
        limit = now - self.horizon
        stale = [k for k, (_, t) in self.thresholds.items() if t < limit]
        for k in stale:
            del self.thresholds[k]
