"""The optional compiled hot path (``native/``, Rust, built by ``make install``).

``normalize_record`` turns a whole raw record into, per event, an ``Event``: read-only, dict-like
(``ev["verb"]``, ``ev.get(...)``, ``ev.to_dict()`` equals ``normalize_event``'s dict) and backed by its Avro
``AuditEvent`` bytes (``ev.avro``); fields become Python objects only when read. Several times cheaper than
orjson + normalize + the Python Avro writer. It covers what API
servers send (an EventList, one event, JSON lines) with ordinary field types; for anything else it returns
None and the caller takes the Python path, which stays the reference (the tests compare both byte for byte).
"""

from __future__ import annotations

from typing import Any

try:
    import kaudit_native as _native
except ImportError:  # not built (no Rust toolchain): the Python path does everything
    _native = None


def available() -> bool:
    return _native is not None


def normalize_record(value: bytes, cluster: str, max_object_bytes: int, redact: bool) -> list[Any] | None:
    """Every event of the record in order (``kaudit_native.Event``), or None: take the Python path."""
    if _native is None:
        return None
    return _native.normalize_record(value, cluster, max_object_bytes, redact)


# Per-record helpers over normalize_record's list (see native/src/batch.rs); only called when available().
if _native is not None:
    # the worker's dedup memory (pipeline.agents.state.SeenIndex's contract, keys as 128-bit hashes)
    SeenKeys = _native.SeenKeys
    FieldSet = _native.FieldSet  # field names resolved once, for Event.values_hash
    # a 128-bit hash of each (objectref_resource, verb, stage, objectref_subresource, responsestatus_code)
    rule_hashes = _native.rule_hashes
    window_counts = _native.window_counts  # (events, indices, dropped, cluster, window_us, stages) -> 2 dicts
    join_avro = _native.join_avro  # (events, indices) -> the AuditEvent bytes back to back
    encode_alert = _native.encode_alert  # alert record dict -> Avro Alert bytes (raises on any other shape)
    # (field type codes, [(value, start, end, n)], path): writes the runs' RowBinary rows to path, returns the
    # indices of the runs that did not decode exactly (none of their rows written)
    avro_rowbinary = _native.avro_rowbinary
