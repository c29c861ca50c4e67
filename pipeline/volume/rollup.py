"""Keeping volume_1h exact: after an unclean stop of an embedded sink an insert may have stored its audit_events
part but not the part the materialized view writes to volume_1h (as for events_1m); add what the rollup lacks."""

from __future__ import annotations

from typing import Any

from pipeline.sinks.tables import INSERT_SETTINGS
from pipeline.warehouse.migrations import VOLUME_KEYS, VOLUME_SELECT


def reconcile_volume(client: Any) -> int:
    """Insert into volume_1h the events (and their bytes) that audit_events has and the rollup lacks; returns the
    events added. A full scan: for the sink's start after an unclean stop only."""
    keys = ", ".join(VOLUME_KEYS)
    missing = (
        f"SELECT {keys}, a.events - r.events AS events, a.bytes - r.bytes AS bytes, "
        f"a.object_bytes - r.object_bytes AS object_bytes FROM ({VOLUME_SELECT} GROUP BY ALL) AS a "
        f"LEFT JOIN (SELECT {keys}, sum(events) AS events, sum(bytes) AS bytes, sum(object_bytes) AS object_bytes "
        f"FROM volume_1h GROUP BY ALL) AS r USING ({keys}) WHERE a.events > r.events"
    )
    added = client.query(f"SELECT sum(events) FROM ({missing})").result_rows[0][0] or 0
    if added:
        client.command(f"INSERT INTO volume_1h ({keys}, events, bytes, object_bytes) {missing}",
                       settings=INSERT_SETTINGS)  # fmt: skip
    return int(added)
