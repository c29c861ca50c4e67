"""Dead-letter records: what could not be processed, why, and where it came from; nothing is dropped silently."""

from __future__ import annotations

import time

import orjson

from pipeline.kafka import headers as H

MAX_DATA = 1024 * 1024


def record(
    reason: str,
    stage: str,
    data: bytes | str,
    *,
    cluster: str = "",
    origin: str = "",
    received_at: int | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of one dead-letter record."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    value = orjson.dumps(
        {
            "reason": reason,
            "stage": stage,
            "cluster": cluster,
            "origin": origin,
            "received_at": received_at if received_at is not None else time.time_ns() // 1000,
            "data": text[:MAX_DATA],
        }
    )
    return value, H.make(reason=reason[:500], stage=stage, origin=origin, cluster=cluster)
