"""Record headers used across topics (raw topic provenance and dead-letter reasons)."""

from __future__ import annotations

CLUSTER = "kaudit-cluster"
RECEIVED_AT = "kaudit-received-at"  # µs since epoch, decimal text
SOURCE = "kaudit-source"  # webhook | file
BATCH_ID = "kaudit-batch-id"
FORMAT = "kaudit-format"  # eventlist | event | jsonlines | aks | eks | gke  (how to read the value)
SKIP_ITEMS = "kaudit-skip-items"  # comma-separated EventList item indexes that went to the dead-letter topic
FILE = "kaudit-file"  # shipper: file path
FIRST_LINE = "kaudit-first-line"  # shipper: line number of the first line in the record
REASON = "kaudit-reason"  # dead-letter: why
STAGE = "kaudit-stage"  # dead-letter: bridge | shipper | worker | sink
ORIGIN = "kaudit-origin"  # dead-letter: where the bytes came from (topic:partition:offset, file:line)
SOURCE_ID = "kaudit-source-id"  # alerts: the raw record (partition:offset) that raised it, for the sink


def to_dict(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")) for k, v in headers or ()}


def make(**pairs: str | int | None) -> list[tuple[str, bytes]]:
    """make(cluster='a') -> [('kaudit-cluster', b'a')]; names map to the constants above."""
    out = []
    for name, value in pairs.items():
        if value is None:
            continue
        out.append((globals()[name.upper()], str(value).encode()))
    return out
