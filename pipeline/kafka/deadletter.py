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


def record(
    reason: str,
    stage: str,
    data: bytes | str,
    *,
    cluster: str = "",
    origin: str = "",
    received_at: int | None = None,
    max_data: int = MAX_DATA,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """(value, headers) of one dead-letter record (``data`` cut at ``max_data`` characters: a record must fit
    KAUDIT_MAX_MESSAGE_BYTES even after JSON escaping)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text, redacted, withheld = redact_text(text)
    value = orjson.dumps(
        {
            "reason": reason,
            "stage": stage,
            "cluster": cluster,
            "origin": origin,
            "received_at": received_at if received_at is not None else time.time_ns() // 1000,
            "data": text[:max_data],
            "redacted": redacted,  # ids of the credential fields hashed in data
            "withheld": withheld,  # lines of data withheld because they are not JSON
        }
    )
    return value, H.make(reason=reason[:500], stage=stage, origin=origin, cluster=cluster)
