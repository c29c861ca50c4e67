"""Cheap Avro plumbing for the hot path: read the few header fields of an ``EventBatch`` without decoding its
events, and wrap many schemaless records into one Avro Object Container File that ClickHouse decodes in C++.

Why: fastavro decodes ~35k events/s in Python, while ClickHouse reads the same bytes (``FORMAT Avro``) at
several hundred thousand rows/s. The sink only needs each record's ``source_id`` and event count.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache

from pipeline.models.avro import _known_by_fp, codec

MAGIC = b"Obj\x01"


class HeaderError(ValueError):
    """The bytes are not a well-formed EventBatch prefix."""


def zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    acc = 0
    n = len(buf)
    while True:
        if pos >= n or shift > 63:
            raise HeaderError("truncated varint")
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return (acc >> 1) ^ -(acc & 1), pos


def read_string(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = read_long(buf, pos)
    if n < 0 or pos + n > len(buf):
        raise HeaderError("bad string length")
    try:
        return buf[pos : pos + n].decode(), pos + n
    except UnicodeDecodeError as exc:
        raise HeaderError("string is not UTF-8") from exc


@dataclass(frozen=True, slots=True)
class BatchHeader:
    source_id: str
    cluster: str
    received_at: int
    n_events: int
    # where the events array's AuditEvent records lie in the value, when the array is one block written with its
    # byte size followed by the end of the array (what the worker writes); -1 when the records must be decoded to
    # be found (fastavro's count-only block, records of older workers)
    events_start: int = -1
    events_end: int = -1


def read_batch_header(value: bytes) -> BatchHeader:
    """source_id, cluster, received_at and the event count of an EventBatch (field order of the schema), and where
    its AuditEvent records lie if the array says so (see ``BatchHeader``).

    fastavro writes an array as one block followed by a 0 block; the count is that block's. A writer that
    splits arrays into several blocks would make the count low: the sink then sees a "partial" source and
    falls back to the exact per-event path, so nothing is lost either way.
    """
    source_id, pos = read_string(value, 0)
    cluster, pos = read_string(value, pos)
    received_at, pos = read_long(value, pos)
    count, pos = read_long(value, pos)
    start = end = -1
    if count < 0:  # negative count: block size in bytes follows
        count = -count
        size, pos = read_long(value, pos)
        if size >= 0 and pos + size < len(value) and value[pos + size] == 0:  # the array ends after this block
            start, end = pos, pos + size
    elif count == 0:
        start = end = pos - 1
    if not value or value[-1] != 0:
        raise HeaderError("array not terminated")
    return BatchHeader(source_id, cluster, received_at, count, start, end)


def read_rows_header(value: bytes) -> tuple[str, int]:
    """source_id and row count of a VerbStats / StatusStats record (``source_id``, ``window_seconds``,
    ``rows``: the same single-block caveat as ``read_batch_header``)."""
    source_id, pos = read_string(value, 0)
    _window_seconds, pos = read_long(value, pos)
    count, pos = read_long(value, pos)
    if count < 0:
        count = -count
        _, pos = read_long(value, pos)
    if not value or value[-1] != 0:
        raise HeaderError("array not terminated")
    return source_id, count


@cache
def known_fps(stem: str) -> frozenset[str]:
    """Fingerprints of every known version of ``stem``'s record (the writer schemas a reader can resolve)."""
    name = codec(stem).name
    return frozenset(
        {codec(stem).fp} | {fp for fp, schema in _known_by_fp().items() if schema["name"] == name}
    )


@cache
def _schema_json(fp: str, stem: str = "event_batch") -> bytes:
    current = codec(stem)
    if fp in ("", current.fp):
        parsed = current.schema
    else:
        known = _known_by_fp()
        if fp not in known or known[fp]["name"] != current.name:
            raise HeaderError(f"unknown writer schema fingerprint {fp} for {current.name}")
        parsed = known[fp]
    return json.dumps(_strip_fastavro_keys(parsed)).encode()


def _strip_fastavro_keys(schema):  # noqa: ANN001, ANN202 - JSON-ish recursion
    """fastavro's parsed schema carries private ``__fastavro_parsed`` keys; ClickHouse wants plain JSON."""
    if isinstance(schema, dict):
        return {k: _strip_fastavro_keys(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_strip_fastavro_keys(v) for v in schema]
    return schema


def container_chunks(values: list[bytes], writer_fp: str = "", stem: str = "event_batch") -> list[bytes]:
    """One Avro Object Container File (codec null) holding ``values`` as datums of the writer schema (the
    schema with fingerprint ``writer_fp``, which must be a version of ``stem``'s record; "" = the current),
    as pieces to write one after the other (``writelines``: the values are not copied into one buffer)."""
    sync = os.urandom(16)
    block = zigzag(len(values)) + zigzag(sum(len(v) for v in values))
    return [_file_header(_schema_json(writer_fp, stem), sync) + block, *values, sync]


def _file_header(schema: bytes, sync: bytes) -> bytes:
    """Magic, metadata (the schema, codec null) and sync marker of an Avro Object Container File."""
    return b"".join([MAGIC, zigzag(2), zigzag(11), b"avro.schema", zigzag(len(schema)), schema,
                     zigzag(10), b"avro.codec", zigzag(4), b"null", zigzag(0), sync])  # fmt: skip


def container(values: list[bytes], writer_fp: str = "", stem: str = "event_batch") -> bytes:
    """``container_chunks`` as one bytes object."""
    return b"".join(container_chunks(values, writer_fp, stem))


def record_runs(runs: list[tuple[bytes, tuple[int, int], int]], stem: str = "audit_event") -> list[bytes | memoryview]:
    """One Avro Object Container File of ``stem``'s records (codec null, the current schema) from runs of records
    already encoded back to back: (value, (start, end), count) -> one data block per run, holding
    ``value[start:end]`` as is (memoryviews: nothing is copied before the file write)."""
    sync = os.urandom(16)
    out: list[bytes | memoryview] = [_file_header(_schema_json("", stem), sync)]
    for value, (start, end), count in runs:
        out += [zigzag(count) + zigzag(end - start), memoryview(value)[start:end], sync]
    return out
