"""Avro encode/decode (fastavro, schemaless) with schema name + fingerprint headers.

Writers put ``kaudit-schema`` and ``kaudit-schema-fp`` headers on every record; readers find the writer
schema by fingerprint among every ``*.avsc`` in ``schemas/`` and resolve it to the current schema.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pipeline.config import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas"

# Timestamps stay integer microseconds inside kaudit (fast, exact, what ClickHouse takes); the schemas keep
# logicalType timestamp-micros for other consumers, so turn fastavro's datetime conversion off for reads.
import fastavro.read as _fastavro_read  # noqa: E402

_fastavro_read.LOGICAL_READERS["long-timestamp-micros"] = lambda data, *_: data
H_SCHEMA = "kaudit-schema"
H_FP = "kaudit-schema-fp"


class AvroDecodeError(ValueError):
    pass


@dataclass(frozen=True)
class Codec:
    name: str  # full record name, e.g. io.kaudit.EventBatch
    schema: Any  # parsed
    fp: str

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return [(H_SCHEMA, self.name.encode()), (H_FP, self.fp.encode())]

    def encode(self, record: dict[str, Any]) -> bytes:
        fast = _compiled_writer(self.fp, self.schema)
        if fast is not None:
            try:
                return fast(record)
            except Exception:  # noqa: BLE001, S110 - anything unusual: fastavro decides (same bytes or its error)
                pass
        return self.encode_fastavro(record)

    def encode_fastavro(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def decode(self, data: bytes, writer_fp: str | None = None) -> dict[str, Any]:
        writer = self.schema
        if writer_fp and writer_fp != self.fp:
            known = _known_by_fp()
            if writer_fp not in known:
                raise AvroDecodeError(f"unknown writer schema fingerprint {writer_fp} for {self.name}")
            writer = known[writer_fp]
        try:
            return fastavro.schemaless_reader(io.BytesIO(data), writer, self.schema if writer is not self.schema else None)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad bytes
            raise AvroDecodeError(f"cannot decode {self.name}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------------
# A compiled writer: the worker encodes ~35 fields per event and fastavro's generic writer spends about 1 µs per
# field. For schemas made only of records, strings, int/long (any logicalType), booleans, arrays and maps (all of
# kaudit's), ``_compiled_writer`` generates one plain Python function per record type that writes the same
# bytes. It is strict about types (str, int, bool, list/tuple, dict) and raises on anything else, and
# ``Codec.encode`` then lets fastavro encode (or reject) the record, so output and errors stay fastavro's.

_MAX_LONG = 1 << 63
_CACHE_MAX = 4096  # entries per field cache; cleared when full


def _varint_slow(z: int) -> bytes:
    out = bytearray()
    while z >= 128:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_ZZ = [_varint_slow(n << 1) for n in range(4096)]  # Avro encoding of 0..4095 (lengths, small ints)
_HIGH: dict[int, bytes] = {}  # varint tails of values >= 2**28 (timestamps share them)


def _varint(n: int) -> bytes:
    """Avro long: zigzag + base-128 varint, 64-bit range only (like fastavro)."""
    if type(n) is not int and type(n) is not bool:
        raise TypeError(f"not an int: {n!r}")
    if not -_MAX_LONG <= n < _MAX_LONG:
        raise OverflowError(f"{n} out of the Avro long range")
    z = (n << 1) ^ (n >> 63)
    if z < 16384:
        return bytes((z,)) if z < 128 else bytes((z & 0x7F | 0x80, z >> 7))
    if z < 1 << 28:
        return _varint_slow(z)
    hi = z >> 28
    tail = _HIGH.get(hi)
    if tail is None:
        tail = _varint_slow(hi)
        if len(_HIGH) >= _CACHE_MAX:
            _HIGH.clear()
        _HIGH[hi] = tail
    return bytes((z & 0x7F | 0x80, z >> 7 & 0x7F | 0x80, z >> 14 & 0x7F | 0x80, z >> 21 & 0x7F | 0x80)) + tail


def _str_bytes(v: Any) -> bytes:
    if type(v) is not str:
        raise TypeError(f"not a str: {v!r}")
    b = v.encode()
    n = len(b)
    return (_ZZ[n] if n < 4096 else _varint(n)) + b


def _remember(cache: dict[Any, bytes], key: Any, value: bytes) -> bytes:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


# fields whose values are (nearly) unique per record: encoding them directly beats a cache lookup
_UNCACHED = re.compile(r"(^|_)(u?id|object|extra|uri|message|name|title|group_key)$")
_SCALAR = ("string", "int", "long", "boolean")


class _Unsupported(Exception):
    pass


class _Gen:
    """Generates Python source for one writer function per record type."""

    def __init__(self) -> None:
        self.funcs: dict[str, list[str]] = {}
        self.consts: dict[str, Any] = {}
        self.n = 0

    def var(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: Any) -> str:
        name = self.var("C")
        self.consts[name] = value
        return name

    def record(self, schema: dict[str, Any]) -> str:
        fname = "w_" + str(schema["name"]).replace(".", "_")
        if fname in self.funcs:
            return fname
        self.funcs[fname] = []  # placeholder against recursion
        lines = [f"def {fname}(d, out):", "    if type(d) is not dict: raise TypeError('not a dict')"]
        for f in schema["fields"]:
            v = self.var("v")
            # a missing field raises KeyError: fastavro then writes the record (defaults) or names the field
            lines.append(f"    {v} = d[{f['name']!r}]")
            lines += self.value(f["type"], v, "    ", cached=not _UNCACHED.search(f["name"]))
        self.funcs[fname] = lines
        return fname

    def _kind(self, t: Any) -> Any:
        if isinstance(t, dict) and t.get("type") in _SCALAR and set(t) <= {"type", "logicalType"}:
            return t["type"]
        return t

    def value(self, t: Any, v: str, ind: str, cached: bool = False) -> list[str]:
        t = self._kind(t)
        if isinstance(t, dict):
            kind = t.get("type")
            if kind == "record":
                return [f"{ind}{self.record(t)}({v}, out)"]
            if kind in ("array", "map"):
                if kind == "array":
                    check = f"type({v}) is not list and type({v}) is not tuple"
                    key, leaf = f"tuple({v})", self._kind(t["items"])
                else:
                    check = f"type({v}) is not dict"
                    key, leaf = f"tuple({v}.items())", self._kind(t["values"])
                head = [f"{ind}if {check}: raise TypeError('not a {kind}')"]
                if cached and leaf == "string":  # whole list / map of strings remembered (user groups, annotations)
                    helper, k, x = self.var("a_"), self.const({}), self.var("x")
                    body = self.block(t, kind, "v", "    ")
                    self.funcs[helper] = [f"def {helper}(v):", "    out = bytearray()", *body, "    return bytes(out)"]
                    return head + [
                        f"{ind}if not {v}: out += b'\\x00'",
                        f"{ind}else:",
                        f"{ind}    {x} = {k}.get({key})",
                        f"{ind}    if {x} is None: {x} = R({k}, {key}, {helper}({v}))",
                        f"{ind}    out += {x}",
                    ]
                return head + self.block(t, kind, v, ind)
            raise _Unsupported(repr(t))
        if t == "string" and cached:
            k, x = self.const({}), self.var("x")
            return [f"{ind}{x} = {k}.get({v})", f"{ind}if {x} is None: {x} = R({k}, {v}, B({v}))", f"{ind}out += {x}"]
        if t == "string":
            return [f"{ind}out += B({v})"]
        if t in ("int", "long"):
            return [f"{ind}out += Z[{v}] if type({v}) is int and 0 <= {v} < 4096 else V({v})"]
        if t == "boolean":
            return [
                f"{ind}if type({v}) is not bool: raise TypeError('not a bool')",
                f"{ind}out += b'\\x01' if {v} else b'\\x00'",
            ]
        raise _Unsupported(repr(t))

    def block(self, t: dict[str, Any], kind: str, v: str, ind: str) -> list[str]:
        """Avro array/map: one block (count, items) then the 0 terminator, like fastavro."""
        x = self.var("x")
        if kind == "array":
            loop = [f"{ind}    for {x} in {v}:", *self.value(t["items"], x, ind + "        ", True)]
        else:
            k = self.var("k")
            loop = [
                f"{ind}    for {k}, {x} in {v}.items():",
                *self.value("string", k, ind + "        ", True),
                *self.value(t["values"], x, ind + "        ", True),
            ]
        return [f"{ind}if {v}:", f"{ind}    out += V(len({v}))", *loop, f"{ind}out += b'\\x00'"]


_WRITERS: dict[str, Any] = {}


def _compiled_writer(fp: str, schema: Any) -> Any:
    """A function record -> bytes equal to fastavro's schemaless encoding, or None if the schema needs fastavro."""
    try:
        return _WRITERS[fp]
    except KeyError:
        pass
    writer = None if os.environ.get("KAUDIT_AVRO_FASTAVRO_ONLY") else _build_writer(fp, schema)
    _WRITERS[fp] = writer
    return writer


def writer_source(schema: Any) -> tuple[str, dict[str, Any]]:
    """The generated source of a compiled writer (for tests and curiosity)."""
    gen = _Gen()
    top = gen.record(schema)
    code = "\n".join(line for lines in gen.funcs.values() for line in lines)
    return code + f"\ndef encode(record):\n    out = bytearray()\n    {top}(record, out)\n    return bytes(out)\n", gen.consts


def _build_writer(fp: str, schema: Any) -> Any:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    try:
        code, consts = writer_source(schema)
    except _Unsupported:
        return None
    ns: dict[str, Any] = {"Z": _ZZ, "V": _varint, "B": _str_bytes, "R": _remember, **consts}
    exec(compile(code, f"<avro writer {fp}>", "exec"), ns)  # noqa: S102 - code generated from our own schema
    return ns["encode"]


def _load(path: Path) -> Any:
    return fastavro.parse_schema(json.loads(path.read_text()))


@cache
def _known_by_fp() -> dict[str, Any]:
    out = {}
    for p in sorted(SCHEMA_DIR.glob("*.avsc")):
        parsed = _load(p)
        out[fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")] = parsed
    return out


@cache
def codec(file_stem: str) -> Codec:
    """codec('event_batch'), codec('verb_stats'), codec('status_stats'), codec('alert'), codec('audit_event')."""
    parsed = _load(SCHEMA_DIR / f"{file_stem}.avsc")
    fp = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return Codec(parsed["name"], parsed, fp)


def header_value(headers: list[tuple[str, bytes]] | None, key: str) -> str | None:
    for k, v in headers or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


def decode_record(stem: str, value: bytes, headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
    return codec(stem).decode(value, header_value(headers, H_FP))


def source_id_suffix(source_id: str) -> bytes:
    """The bytes an ``AuditEvent`` ends with after the fields normalization writes: its ``source_id``."""
    return _str_bytes(source_id)


def encode_event_batch(
    source_id: str, cluster: str, received_at: int, events: bytes, n_events: int, dropped_keys: list[tuple[str, str]]
) -> bytes:
    """An ``EventBatch`` from ``n_events`` events already encoded as ``AuditEvent``, back to back (both worker paths
    build it here, so they write the same bytes). The events array is one block written with its byte size (a
    negative count, then the size: Avro's form for skipping a block), so a reader finds the run of AuditEvent
    records without decoding them: the sink hands that run to ClickHouse as is (``avro_ocf.read_batch_header``).
    Any Avro reader decodes it like ``codec("event_batch").encode``'s output, which writes the count alone."""
    parts = [_str_bytes(source_id), _str_bytes(cluster), _varint(received_at)]
    if n_events:
        parts.append(_varint(-n_events))
        parts.append(_varint(len(events)))
        parts.append(events)
    parts.append(b"\x00")
    if dropped_keys:
        parts.append(_varint(len(dropped_keys)))
        for auditid, stage in dropped_keys:
            parts.append(_str_bytes(auditid))
            parts.append(_str_bytes(stage))
    parts.append(b"\x00")
    return b"".join(parts)
