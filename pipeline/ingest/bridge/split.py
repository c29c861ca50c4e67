"""A webhook batch larger than a Kafka record may be, cut into records that fit, instead of refused.

An API server sends up to 400 events per POST with no byte limit (truncation is off by default), and on any
non-2xx it retries the same batch five times and then drops it. A batch of large objects at Request or
RequestResponse level (CRDs, big ConfigMaps, apply patches) can be bigger than ``KAUDIT_MAX_MESSAGE_BYTES`` (or a
managed Kafka's 1 MiB default): refusing it would lose every event in it. So the EventList is cut at item
boundaries into several raw records, each a valid EventList holding the **exact bytes** of its items (the
contract the worker and the exactness tests rely on is per item: auditID, stage and content byte for byte).
Retries stay exact: a retried batch is cut the same way and the worker's (cluster, auditID, stage) dedup drops
what an earlier attempt already stored. An item that alone exceeds the limit is stored without its objects
(``pipeline.ingest.oversize``: as the API server's truncating backend would) and its original goes to the
dead-letter topic (cut, redacted); the rest of the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.ingest import oversize
from pipeline.models import deepjson

try:
    import msgspec

    class _RawList(msgspec.Struct, gc=False):
        items: list[msgspec.Raw] | None = None

    _raw_decoder: Any = msgspec.json.Decoder(_RawList)
except ImportError:  # pragma: no cover - msgspec is a dependency; the fallback keeps JSON equality, not bytes
    _raw_decoder = None

HEAD = b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":['
TAIL = b"]}"
TOO_LARGE = oversize.REASON
TRUNCATED = oversize.REASON_TRUNCATED


@dataclass
class Part:
    """One raw record: an EventList of some items, and which of them (by index in this part) are dead-lettered."""

    items: list[bytes] = field(default_factory=list)
    skip: list[int] = field(default_factory=list)
    size: int = len(HEAD) + len(TAIL)

    def body(self) -> bytes:
        return HEAD + b",".join(self.items) + TAIL


def item_bytes(body: bytes) -> list[bytes]:
    """The exact bytes of each item of an EventList body (already validated by ``classify``)."""
    if _raw_decoder is not None:
        try:
            return [bytes(r) for r in (_raw_decoder.decode(body).items or [])]
        except (RecursionError, msgspec.DecodeError):  # nested deeper than msgspec recurses, or a lone surrogate
            # escape msgspec refuses (deepjson reads both as Go does): cut by a bracket scan instead
            items = deepjson.loads(body).get("items") or []
            spans = deepjson.item_spans(body)
            if spans is not None and len(spans) == len(items):
                return [body[a:b] for a, b in spans]
            return [orjson.dumps(it) for it in items]
    return [orjson.dumps(it) for it in (deepjson.loads(body).get("items") or [])]


def split(body: bytes, limit: int, bad: list[tuple[int, str, Any]]) -> tuple[list[Part], list[tuple[int, str, Any]]]:
    """(parts of at most ``limit`` bytes each, bad items including the items too large for any part).

    ``bad`` holds the items ``classify`` found invalid, by index in the whole batch: they keep their place in
    their part (listed in its ``skip``), as in an unsplit record, and still go to the dead-letter topic."""
    invalid = {i for i, _, _ in bad}
    out_bad = list(bad)
    parts: list[Part] = []
    cur = Part()
    for i, raw in enumerate(item_bytes(body)):
        need = len(raw) + (1 if cur.items else 0)
        if Part().size + len(raw) > limit:  # alone too large for a record: store it without its objects
            if i in invalid:
                continue
            small = oversize.truncate(raw, limit - Part().size)
            out_bad.append((i, TOO_LARGE if small is None else TRUNCATED, orjson.Fragment(raw)))
            if small is None:
                continue
            raw, need = small, len(small) + (1 if cur.items else 0)
        if cur.size + need > limit and cur.items:
            parts.append(cur)
            cur, need = Part(), len(raw)
        if i in invalid:
            cur.skip.append(len(cur.items))
        cur.items.append(raw)
        cur.size += need
    if cur.items:
        parts.append(cur)
    return parts, sorted(out_bad, key=lambda b: b[0])
