"""Tumbling event-time windows as per-record contributions.

A raw record contributes, for each (cluster, window_start, key) its deduplicated events fall in, one row with
its count. Nothing is kept between records, so late, out-of-order and backfilled events (2017 in 2026) are
exact by construction: a window's total is the sum of its rows over source_ids, whenever they arrive."""

from __future__ import annotations

from collections.abc import Hashable


def window_start_us(ts_us: int, window_seconds: int) -> int:
    size = window_seconds * 1_000_000
    return ts_us - ts_us % size


class WindowCounts:
    """Counts and filter-dropped counts per (cluster, window_start, key) for one raw record."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int, Hashable], list[int]] = {}

    def add(self, cluster: str, window_start: int, key: Hashable, dropped: bool) -> None:
        slot = self.counts.get((cluster, window_start, key))
        if slot is None:
            slot = self.counts[(cluster, window_start, key)] = [0, 0]
        slot[0] += 1
        if dropped:
            slot[1] += 1

    def rows(self, key_name: str) -> list[dict]:
        """Avro rows sorted by (window, key): deterministic bytes for the same input."""
        return [
            {"cluster": c, "window_start": ws, key_name: k, "count": n, "dropped": d}
            for (c, ws, k), (n, d) in sorted(self.counts.items(), key=lambda kv: (kv[0][1], str(kv[0][2]), kv[0][0]))
        ]

    def __bool__(self) -> bool:
        return bool(self.counts)
