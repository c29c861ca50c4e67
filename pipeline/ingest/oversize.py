"""An audit event too large for any Kafka record is kept without its objects, as the API server's own truncating
backend keeps it, instead of being stored nowhere.

An event that alone is larger than ``KAUDIT_MAX_MESSAGE_BYTES`` cannot go into the raw topic as it came. Before,
it went only to the dead-letter topic (cut there too), so it was never parsed, counted, flagged or stored: a
``list`` of every Secret at RequestResponse level in a large cluster, or, with a managed Kafka's 1 MiB limit, a
padded Pod or RoleBinding write, left no event behind at all -- an attacker could hide an action by making it big.

Now the ingest path (bridge and shipper) stores the event the way ``k8s.io/apiserver/plugin/pkg/audit/truncate``
writes one over its ``--audit-*-truncate-max-event-size``: ``requestObject`` and ``responseObject`` dropped and the
annotation ``audit.k8s.io/truncated: "true"`` added, everything else as it came; kaudit adds
``kaudit.io/original-bytes`` (the size it had), so a reader tells kaudit's cut from the API server's. The original
still goes to the dead-letter topic (cut to its size limit), and a write cut this way alerts
(rule ``write-truncated-for-size``): the object rules could not read what it wrote.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.models import deepjson

ANNOTATION_TRUNCATED = "audit.k8s.io/truncated"  # the API server's truncate backend writes the same annotation
ANNOTATION_ORIGINAL_BYTES = "kaudit.io/original-bytes"
REASON = "event_too_large_for_kafka"  # dead-letter reason: not stored at all
REASON_TRUNCATED = "event_too_large_for_kafka: stored without requestObject/responseObject"


def truncate(raw: bytes, limit: int) -> bytes | None:
    """The event ``raw`` without its objects, annotated; None when it is not one JSON object or is still larger
    than ``limit`` bytes without them."""
    try:
        ev: Any = deepjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError, ValueError):
        return None
    if not isinstance(ev, dict):
        return None
    ev.pop("requestObject", None)
    ev.pop("responseObject", None)
    annotations = ev.get("annotations")
    ev["annotations"] = {
        **(annotations if isinstance(annotations, dict) else {}),
        ANNOTATION_TRUNCATED: "true",
        ANNOTATION_ORIGINAL_BYTES: str(len(raw)),
    }
    try:
        out = orjson.dumps(ev)
    except (TypeError, orjson.JSONEncodeError):
        return None
    return out if len(out) <= limit else None
