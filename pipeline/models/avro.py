"""Avro encode/decode (fastavro, schemaless) with schema name + fingerprint headers.

Writers put ``kaudit-schema`` and ``kaudit-schema-fp`` headers on every record; readers find the writer
schema by fingerprint among every ``*.avsc`` in ``schemas/`` and resolve it to the current schema.
"""

from __future__ import annotations

import io
import json
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
