"""Dead-letter records: what could not be processed, why, and where it came from; nothing is dropped silently.

The text is redacted by the credential model first (``pipeline.redaction.redact_text``): a bad event may well
carry a Secret, and the dead-letter topic is read by more people than the raw topic. Text that is not JSON is
withheld (size and hash kept); the record's origin names where the original is (raw topic offset, file line).
"""

from __future__ import annotations

import time

import orjson

from pipeline.kafka import headers as H
from pipeline.redaction import redact_text

MAX_DATA = 1024 * 1024


HEADROOM = 16 * 1024  # the record's headers and Kafka's own framing, besides the value


def record(
    reason: str,
    stage: str,
    data: bytes | str,
    *,
    cluster: str = "",
    origin: str = "",
    received_at: int | None = None,
    max_data: int = MAX_DATA,
    limit: int | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of one dead-letter record: ``data`` cut at ``max_data`` characters, and further until the
    value fits ``limit`` bytes (KAUDIT_MAX_MESSAGE_BYTES) after JSON escaping: a dead letter Kafka refuses for its
    size would stop the component that writes it (a 1 MiB Kafka refused the shipper's 1 MiB of data)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text, redacted, withheld = redact_text(text)
    text = text[:max_data]
    at = received_at if received_at is not None else time.time_ns() // 1000
    while True:
        value = orjson.dumps(
            {
                "reason": reason,
                "stage": stage,
                "cluster": cluster,
                "origin": origin,
                "received_at": at,
                "data": text,
                "redacted": redacted,  # ids of the credential fields hashed in data
                "withheld": withheld,  # lines of data withheld because they are not JSON
            }
        )
        room = (limit or 0) - HEADROOM
        if limit is None or len(value) <= room or not text:
            break
        text = text[: max(0, len(text) * max(room, 0) // len(value) - 1024)]  # escaping is not uniform: again
    return value, H.make(reason=reason[:500], stage=stage, origin=origin, cluster=cluster)
