"""Per-partition worker state: which (cluster, auditID, stage) were seen at which raw offset, which alerts were
emitted, and threshold-rule counts. Rebuilt from the events topic after a (re)assignment so that a replayed
raw record produces exactly the outputs it produced the first time (see README-DEV-CONTRACTS.md)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.agents.memory import Memory, Updates
from pipeline.models import native

log = logging.getLogger("kaudit.worker.state")


class DedupIndex(Protocol):
    """What the worker needs of a dedup memory: ``SeenIndex`` below, or its native twin ``SeenKeys``."""

    horizon: float

    def __len__(self) -> int: ...
    def first_at(self, key: Hashable, offset: int, now: float) -> bool: ...
    def add(self, key: Hashable, offset: int, seen_at: float) -> None: ...
    def expire(self, now: float) -> int: ...
    def first_sightings(
        self, events: list[Any], cluster: str, offset: int, now: float, skip: set[int]
    ) -> tuple[list[int], int]: ...


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

    def first_sightings(
        self, events: list[Any], cluster: str, offset: int, now: float, skip: set[int]
    ) -> tuple[list[int], int]:
        """The dedup pass over one record's events: indices (in order) of events whose (cluster, auditid,
        stage) is seen here first, not earlier in the record; and how many were duplicates."""
        in_record: set[tuple[str, str, str]] = set()
        firsts: list[int] = []
        n_dup = 0
        for i, ev in enumerate(events):
            if i in skip:
                continue
            k = (cluster, ev["auditid"], ev["stage"])
            if k in in_record or not self.first_at(k, offset, now):
                n_dup += 1
                continue
            in_record.add(k)
            firsts.append(i)
        return firsts, n_dup


def seen_index(horizon: float, compact: bool = True) -> DedupIndex:
    """A SeenIndex, or with ``compact`` and the compiled hot path built, its native twin ``SeenKeys``: the same
    contract, with keys kept as 128-bit hashes (~77 bytes per key instead of ~340: at 30k events/s over a 900 s
    horizon, ~2 GB instead of ~9 GB per worker) and the per-record dedup pass in native code."""
    if compact and native.available():
        return native.SeenKeys(horizon)
    return SeenIndex(horizon)


@dataclass
class PartitionState:
    """Everything the worker remembers about one raw partition."""

    partition: int
    horizon: float
    compact: bool = True  # keep keys in native SeenKeys when built (see seen_index)
    seen: DedupIndex = field(init=False)  # (cluster, auditid, stage) -> first raw offset
    alerts: DedupIndex = field(init=False)  # alert_id -> first raw offset
    # (rule_id, cluster, group_key, window_start) -> [count, last update wall time]
    thresholds: dict[tuple[str, str, str, int], list[Any]] = field(default_factory=dict)
    records: int = 0
    last_offset: int = -1
    memory_max_keys: int = 5_000_000
    # rules with memory (first-seen terms, sequences): rebuilt from the memory topic, see pipeline.agents.memory
    memory: Memory = field(init=False)
    updates: Updates = field(default_factory=Updates)  # the current record's memory changes
    memory_horizons: dict[str, int] = field(default_factory=dict)  # rule id -> us an entry matters (Processor)
    _forgot_at: float = 0.0

    def __post_init__(self) -> None:
        self.memory = Memory(self.memory_max_keys)
        self.seen = seen_index(self.horizon, self.compact)
        self.alerts = seen_index(self.horizon, self.compact)

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
        if self.memory and now - self._forgot_at >= 300:  # a pass over every entry: every 5 minutes
            self._forgot_at = now
            self.memory.forget(self.memory_horizons)
