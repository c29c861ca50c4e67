"""One writer per ClickHouse table. Each knows which source_ids the table already holds (an LRU of recent ones,
a per-raw-partition offset watermark, and an exact ClickHouse check for anything at or below it), inserts only
what is missing, and does it in one large insert with a deterministic deduplication token.

Why a watermark: ``source_id = "<raw partition>:<raw offset>"`` and the worker writes raw partition p's
outputs, in raw-offset order, to partition p of each output topic. A source above the highest offset already
stored for its partition cannot be in the table, so the common case needs no lookup at all; replays after a
crash (worker or sink) land at or below it and get an exact ``count() ... WHERE source_id IN`` check.
A source found with fewer rows than it should have (an insert cut by a crash between two parts) gets only
its missing rows, matched by the table's natural key.

Events, stats and alerts records are not decoded in Python on the happy path: their Kafka values go to ClickHouse as
Avro container files that it decodes itself, split into files that several threads read (``ContainerWriter``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.models import native
from pipeline.models.avro import codec
from pipeline.sinks import avro_ocf
from pipeline.sinks.metrics import M
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS

log = logging.getLogger("kaudit.sink")

LRU_SIZE = 200_000
PARALLEL_READ_ROWS = 100_000  # a container this big is read by several threads (ContainerWriter.read_threads)
# max_partitions_per_insert_block: the tables are partitioned by month, and ClickHouse refuses an insert that
# touches more than 100 partitions (Code 252). A batch is whatever the clusters sent: one cluster whose clock
# jumped, a backfill of old logs, or a client posting a timestamp per month would make every retry of the batch
# fail, and the sink, retrying, would stop storing for every cluster. 0 = no limit (a part per month touched).
INSERT_SETTINGS = {"async_insert": 0, "max_partitions_per_insert_block": 0}


@dataclass(slots=True)
class Item:
    """One Kafka record bound for a table."""

    topic: str
    partition: int
    offset: int
    value: bytes
    source_id: str
    n_rows: int
    fp: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)  # decoded rows (small tables, partial sources)
    key: str = ""  # alerts: the alert_id
    # events: where the value's run of AuditEvent records lies (avro_ocf.BatchHeader), if the worker wrote it so
    span: tuple[int, int] | None = None


def raw_position(source_id: str) -> tuple[int, int] | None:
    p, sep, o = source_id.partition(":")
    if not sep or not p.isdigit() or not o.isdigit():
        return None
    return int(p), int(o)


def dedup_token(table: str, parts: Iterable[str]) -> str:
    h = hashlib.sha1(table.encode())
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return f"kaudit:{table}:{h.hexdigest()}"


class TableWriter:
    """Base: source_id bookkeeping shared by every table."""

    table = ""
    key_columns: tuple[str, ...] = ()  # natural key of a row within one source_id

    def __init__(self, client: Client) -> None:
        self.client = client
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.watermark: dict[int, int] = {}
        self.watermark_fresh = False

    # --- what is already stored ------------------------------------------------------------------
    def invalidate(self) -> None:
        """After a failed insert or a new partition assignment the watermark must be read again."""
        self.watermark_fresh = False

    def _load_watermark(self) -> None:
        rows = self.client.query(
            f"SELECT toUInt32(splitByChar(':', source_id)[1]) AS p, max(toUInt64(splitByChar(':', source_id)[2])) "
            f"FROM {self.table} WHERE match(source_id, '^[0-9]+:[0-9]+$') GROUP BY p"
        ).result_rows
        self.watermark = {int(p): int(o) for p, o in rows}
        self.watermark_fresh = True

    def _above_watermark(self, source_id: str) -> bool:
        """True: no source at or after this one's raw position is stored yet, so it is new without a lookup."""
        pos = raw_position(source_id)
        return pos is not None and pos[1] > self.watermark.get(pos[0], -1)

    def _advance(self, stored: Iterable[Item]) -> None:
        for it in stored:
            pos = raw_position(it.source_id)
            if pos is not None and pos[1] > self.watermark.get(pos[0], -1):
                self.watermark[pos[0]] = pos[1]

    def _remember(self, source_ids: Iterable[str]) -> None:
        for sid in source_ids:
            self.recent[sid] = None
            self.recent.move_to_end(sid)
        while len(self.recent) > LRU_SIZE:
            self.recent.popitem(last=False)

    def stored_counts(self, source_ids: list[str]) -> dict[str, int]:
        if not source_ids:
            return {}
        out: dict[str, int] = {}
        for i in range(0, len(source_ids), 10_000):
            chunk = source_ids[i : i + 10_000]
            res = self.client.query(
                f"SELECT source_id, count() FROM {self.table} WHERE source_id IN {{ids:Array(String)}} GROUP BY source_id",
                parameters={"ids": chunk},
            )
            out.update({sid: int(n) for sid, n in res.result_rows})
        return out

    def plan(self, items: list[Item]) -> tuple[list[Item], list[Item], int]:
        """Split items into (new, partial, skipped-count); duplicates inside the batch count as skipped."""
        if not self.watermark_fresh:
            self._load_watermark()
        seen: set[str] = set()
        new: list[Item] = []
        maybe: list[Item] = []
        skipped = 0
        for it in items:
            if it.source_id in seen or it.source_id in self.recent:
                skipped += 1
                continue
            seen.add(it.source_id)
            if self._above_watermark(it.source_id):
                new.append(it)
            else:
                maybe.append(it)
        partial: list[Item] = []
        if maybe:
            stored = self.stored_counts([it.source_id for it in maybe])
            for it in maybe:
                have = stored.get(it.source_id, 0)
                if have == 0:
                    new.append(it)
                elif have >= it.n_rows:
                    skipped += 1
                    self._remember([it.source_id])
                else:
                    log.warning("%s: source %s is partly stored (%d of %d rows); inserting the rest",
                                self.table, it.source_id, have, it.n_rows)  # fmt: skip
                    partial.append(it)
        return new, partial, skipped

    def stored_keys(self, source_ids: list[str]) -> dict[str, Counter]:
        cols = ", ".join(self.key_columns)
        res = self.client.query(
            f"SELECT source_id, {cols} FROM {self.table} WHERE source_id IN {{ids:Array(String)}}",
            parameters={"ids": source_ids},
        )
        out: dict[str, Counter] = {}
        for row in res.result_rows:
            out.setdefault(row[0], Counter())[_key(row[1:])] += 1
        return out

    def missing_rows(self, partial: list[Item]) -> list[dict[str, Any]]:
        """Rows of partly stored sources that the table does not have yet (multiset difference on the key)."""
        if not partial:
            return []
        stored = self.stored_keys([it.source_id for it in partial])
        out = []
        for it in partial:
            have = stored.get(it.source_id, Counter())
            for row in self.decoded_rows(it):
                k = _key(row[c] for c in self.key_columns)
                if have[k] > 0:
                    have[k] -= 1
                else:
                    out.append(row)
        return out

    def decoded_rows(self, it: Item) -> list[dict[str, Any]]:
        return it.rows

    # --- writing -----------------------------------------------------------------------------------
    def write(self, items: list[Item]) -> tuple[int, int]:
        """Insert what is missing; returns (rows inserted, sources skipped). Raises on ClickHouse errors."""
        try:
            new, partial, skipped = self.plan(items)
            inserted = self._insert(new, partial)
        except Exception:
            self.invalidate()
            raise
        self._advance(new + partial)
        self._remember(it.source_id for it in new + partial)
        M.rows.labels(self.table).inc(inserted)
        M.skipped.labels(self.table).inc(skipped)
        return inserted, skipped

    def _insert(self, new: list[Item], partial: list[Item]) -> int:
        raise NotImplementedError


def _key(values: Iterable[Any]) -> tuple:
    out = []
    for v in values:
        if hasattr(v, "timestamp"):  # DateTime64 from ClickHouse vs int µs from Avro
            v = _dt_us(v)
        out.append(v)
    return tuple(out)


def _dt_us(v: Any) -> int:
    import calendar

    return calendar.timegm(v.utctimetuple()) * 1_000_000 + v.microsecond


class ColumnWriter(TableWriter):
    """Inserts of decoded rows: a reused insert context, column-oriented data."""

    columns: list[str] = []

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self._ctx = None

    def insert_rows(self, rows: list[dict[str, Any]], token: str) -> None:
        if not rows:
            return
        if self._ctx is None:
            self._ctx = self.client.create_insert_context(self.table, self.columns, column_oriented=True)
        self._ctx.data = [[r[c] for r in rows] for c in self.columns]
        self._ctx.settings = {
            **(self._ctx.settings or {}),
            **INSERT_SETTINGS,
            "insert_deduplication_token": token,
        }
        self.client.insert(context=self._ctx)


class ContainerWriter(ColumnWriter):
    """Tables fed by one Avro record type that carries an array of rows (``EventBatch.events``,
    ``VerbStats.rows``, ``StatusStats.rows``). New sources go in as Avro containers of the Kafka values, which
    ClickHouse decodes itself (ARRAY JOIN of the array, the record's top-level fields copied onto each row);
    partly stored sources are decoded in Python and only their missing rows inserted."""

    stem = ""  # schema file stem
    array = ""  # the array field holding the rows

    def __init__(self, client: Client, embedded: bool, tmp_dir: Path, read_threads: int = 1) -> None:
        super().__init__(client)
        self.embedded = embedded
        self.tmp_dir = tmp_dir
        # chDB decodes Avro at ~3-5 us/row on one thread, about 2/3 of an insert: split the container into
        # this many files and let that many threads decode them (still one block and one token).
        self.read_threads = max(1, read_threads) if embedded and not _has_glob(str(tmp_dir)) else 1
        self._tail = f" ARRAY JOIN `{self.array}` AS r" if self.array else ""
        self._heads: dict[str, str] = {}
        self._insert_head = self._head_for("")

    def _head_for(self, fp: str) -> str:
        """``INSERT INTO t (cols) {settings}SELECT ... FROM `` for containers of writer schema ``fp``: a column is
        read from the row (``r.col``) when the row has it, else from the record, and left to its default when
        that writer schema predates it (records written by an older worker stay insertable)."""
        head = self._heads.get(fp)
        if head is None:
            schema = _writer_schema(fp, self.stem)
            top = {f["name"] for f in schema["fields"]}
            row: set[str] = set()
            for f in schema["fields"]:
                t = f["type"]
                if f["name"] == self.array and isinstance(t, dict) and isinstance(t.get("items"), dict):
                    row = {x["name"] for x in t["items"]["fields"]}
            # a row's column, else the record's; source_id always the record's (rows of older writers have none,
            # and a row re-encoded from one holds the default "")
            picked = [(c, f"r.`{c}`" if c in row and not (c == "source_id" and c in top) else c)
                      for c in self.columns if c in row or c in top]  # fmt: skip
            cols = ", ".join(c for c, _ in picked)
            head = self._heads[fp] = f"INSERT INTO {self.table} ({cols}) {{settings}}SELECT {', '.join(x for _, x in picked)} FROM "
        return head

    def decoded_rows(self, it: Item) -> list[dict[str, Any]]:
        if not it.rows:
            it.rows = self.rows_of(codec(self.stem).decode(it.value, it.fp or None))
        return it.rows

    def rows_of(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _insert(self, new: list[Item], partial: list[Item]) -> int:
        n = self.insert_values(new, lambda it: f"{it.source_id}:{it.n_rows}")
        rows = self.missing_rows(partial)
        if rows:
            keys = (f"{r['source_id']}|{_key(r[c] for c in self.key_columns)}" for r in rows)
            self.insert_rows(rows, dedup_token(self.table, keys))
            n += len(rows)
        return n

    def insert_values(self, items: list[Item], token_part: Callable[[Item], str]) -> int:
        """Insert the Kafka values of ``items`` as Avro containers (one insert per writer schema); returns rows."""
        n = 0
        by_fp: dict[str, list[Item]] = {}
        current = codec(self.stem)
        for it in items:
            if it.n_rows:
                if it.fp and it.fp != current.fp:
                    # an older writer schema (e.g. events without `redacted`): resolved to the current one, whose
                    # new fields take their defaults, so the insert's SELECT finds every column
                    it.value, it.fp = current.encode(current.decode(it.value, it.fp)), current.fp
                by_fp.setdefault(it.fp, []).append(it)
        for fp, group in by_fp.items():
            rows = sum(it.n_rows for it in group)
            # parallel reads cost ~25% more CPU in all: worth it only for a writer that is catching up
            threads = self.read_threads if rows >= PARALLEL_READ_ROWS else 1
            files = [avro_ocf.container_chunks([it.value for it in part], fp, self.stem)
                     for part in split_rows(group, threads)]  # fmt: skip
            self.insert_container(files, dedup_token(self.table, map(token_part, group)), fp)
            n += rows
        return n

    def insert_container(
        self, data: bytes | list[bytes] | list[list[bytes]], token: str, fp: str = "", head: str = ""
    ) -> None:
        """Insert Avro containers (one, or several read in parallel) of the stem's records with one token. A
        container is bytes, or the list of its pieces (``avro_ocf.container_chunks``).

        However many files, the rows reach the table as one block (squashed up to ``min_insert_block_size_rows``,
        ~1M rows, above any sensible batch), hence one part per partition under one deduplication token: a
        retry of the same files is dropped whole, in whatever order the threads read them. (ClickHouse derives
        the block's id from the token and the source blocks, so the same sources split into another number of
        files are not recognized by the token; ``split_rows`` is deterministic, and in any case the writer plans
        again before every retry: stored sources are skipped by the exact check, which is what exactness rests
        on. A batch above the squash size is cut in read order; for the same reason nothing is lost.)

        ``head``: the ``INSERT ... SELECT ... FROM`` for containers of other records, read one row each and not
        unnested (``EventsWriter``'s AuditEvent runs); default: ``self.stem``'s, with its array unnested."""
        files = [[data]] if isinstance(data, bytes) else [[f] if isinstance(f, bytes) else f for f in data]
        settings: dict[str, Any] = {**INSERT_SETTINGS, "insert_deduplication_token": token,
                                    "use_structure_from_insertion_table_in_table_functions": 0}  # fmt: skip
        if self.embedded:  # chDB: no request body; the engine reads files we own
            paths = self.file_paths(len(files), "avro")
            try:
                for path, chunks in zip(paths, files, strict=True):
                    with path.open("wb") as f:
                        f.writelines(chunks)
            except BaseException:
                _remove(paths)
                raise
            self.insert_files(paths, token, fp=fp, head=head)
        else:  # server: the container is the request body
            if head:
                raise ValueError("a server insert takes EventBatch containers")
            if len(files) != 1:
                raise ValueError("a server insert takes one container")
            self.client.command(
                f"{self._head_for(fp).format(settings='')}input({_structure_literal(self.stem, fp)}){self._tail} FORMAT Avro",
                data=b"".join(files[0]), settings=settings,
            )  # fmt: skip

    def file_paths(self, n: int, ext: str) -> list[Path]:
        """Names for the n files of one embedded insert (this process and thread only)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{self.table}-{os.getpid()}-{threading.get_ident()}"
        return [self.tmp_dir / f"{stem}-{i}.{ext}" for i in range(n)]

    def insert_files(self, paths: list[Path], token: str, fp: str = "", head: str = "", structure: str = "") -> None:
        """Embedded: insert the files (``file_paths``; deleted afterwards) as one block under ``token``: Avro
        containers, or with ``structure`` (a ClickHouse structure literal) RowBinary rows of it."""
        settings: dict[str, Any] = {**INSERT_SETTINGS, "insert_deduplication_token": token,
                                    "use_structure_from_insertion_table_in_table_functions": 0}  # fmt: skip
        try:
            if len(paths) > 1:  # a glob: StorageFile hands each reading thread its own file
                pattern = str(paths[0].parent / f"{{{','.join(p.name for p in paths)}}}")
                settings.update(max_threads=len(paths), max_insert_threads=len(paths), parallel_view_processing=1)
            else:
                pattern = str(paths[0])
            # settings inline: per-call settings cost chDB a snapshot query plus a SET and a reset each
            sql = (head or self._head_for(fp)).format(settings=_settings_clause(settings))
            source = f"'RowBinary', {structure}" if structure else "'Avro'"
            self.client.command(f"{sql}file({_sql_string(pattern)}, {source}){'' if head else self._tail}")
        finally:
            _remove(paths)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


class EventsWriter(ContainerWriter):
    """audit_events, from EventBatch records.

    Embedded, the events of a record the worker wrote with a sized array (``BatchHeader.events_start``) go in as
    what they are, a run of AuditEvent records, each with its source_id: ClickHouse reads them as rows, 1.2-1.7 us
    of CPU per event less than an EventBatch unnested with ARRAY JOIN (README, Benchmarks). With the native module
    the runs are transcoded to RowBinary first (native/src/rowbinary.rs: 0.4 us per event; chDB reads it ~1 us
    cheaper than Avro); a run it cannot decode exactly goes as Avro, where ClickHouse's reader has the last word
    (and the sink's quarantine, on a data error). Records of older workers, of older writer schemas, and every
    record on a server go the ARRAY JOIN way."""

    table = "audit_events"
    key_columns = ("auditid", "stage")
    columns = EVENT_INSERT_COLUMNS
    stem = "event_batch"
    array = "events"

    def __init__(self, client: Client, embedded: bool, tmp_dir: Path, read_threads: int = 2) -> None:
        super().__init__(client, embedded, tmp_dir, read_threads)
        self.rowbinary = True  # direct-path runs as RowBinary when the native module is built (tests turn it off)

    def rows_of(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        for ev in record["events"]:
            ev["source_id"] = record["source_id"]
        return record["events"]

    def insert_values(self, items: list[Item], token_part: Callable[[Item], str]) -> int:
        current = codec(self.stem).fp
        direct = [it for it in items if self.embedded and it.n_rows and it.span is not None and it.fp in ("", current)]
        if not direct:
            return super().insert_values(items, token_part)
        taken = {id(it) for it in direct}
        n = super().insert_values([it for it in items if id(it) not in taken], token_part)
        rows = sum(it.n_rows for it in direct)
        threads = self.read_threads if rows >= PARALLEL_READ_ROWS else 1
        parts = split_rows(direct, threads)
        codes = rowbinary_types() if self.rowbinary and native.available() else None
        if codes is not None:  # RowBinary: what the native transcoder decodes exactly; the rest as Avro records
            paths, done, rest = [], [], []
            try:
                for part, path in zip(parts, self.file_paths(len(parts), "bin"), strict=True):
                    paths.append(path)
                    bad = set(native.avro_rowbinary(codes, [(it.value, *it.span, it.n_rows) for it in part], path))
                    rest.extend(it for i, it in enumerate(part) if i in bad)
                    done.extend(it for i, it in enumerate(part) if i not in bad)
            except BaseException:
                _remove(paths)
                raise
            if done:  # its own token, as below
                self.insert_files(paths, dedup_token(f"{self.table}:rowbinary", map(token_part, done)),
                                  head=self._records_head(), structure=_structure_literal(RECORDS_STEM))  # fmt: skip
            else:
                _remove(paths)
            if not rest:
                return n + rows
            parts = [rest]
        files = [avro_ocf.record_runs([(it.value, it.span, it.n_rows) for it in part], RECORDS_STEM)
                 for part in parts]  # fmt: skip
        # its own token: the same sources sent the other way (another sink version) are another insert
        self.insert_container(files, dedup_token(f"{self.table}:records", (token_part(it) for p in parts for it in p)),
                              head=self._records_head())  # fmt: skip
        return n + rows

    def _records_head(self) -> str:
        """``INSERT ... SELECT ... FROM `` for containers of AuditEvent records (every column is a field of it)."""
        head = self._heads.get(RECORDS_STEM)
        if head is None:
            fields = {f["name"] for f in _writer_schema("", RECORDS_STEM)["fields"]}
            cols = ", ".join(c for c in self.columns if c in fields)
            head = self._heads[RECORDS_STEM] = f"INSERT INTO {self.table} ({cols}) {{settings}}SELECT {cols} FROM "
        return head


RECORDS_STEM = "audit_event"  # the schema of an EventBatch's array items (schemas/event_batch.avsc embeds it)
ROWBINARY_CODES = {"string": "s", "int": "i", "long": "l", "boolean": "b"}


@cache
def rowbinary_types() -> str | None:
    """The current AuditEvent schema's fields as native.avro_rowbinary's type codes; None if one is of a shape
    it does not transcode (then the records go in as Avro)."""
    codes = []
    for f in _writer_schema("", RECORDS_STEM)["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t.get("type") in ("array", "map") and t.get("items", t.get("values")) == "string":
            codes.append("A" if t["type"] == "array" else "M")
            continue
        if isinstance(t, dict) and t.get("type") == "long":  # timestamp-micros
            t = "long"
        if not isinstance(t, str) or t not in ROWBINARY_CODES:
            return None
        codes.append(ROWBINARY_CODES[t])
    return "".join(codes)


class StatsWriter(ContainerWriter):
    """verb_stats / status_stats: one row per (window, key, source_id), from VerbStats / StatusStats records."""

    array = "rows"

    def __init__(self, client: Client, table: str, key: str, embedded: bool, tmp_dir: Path) -> None:
        self.table = table
        self.stem = table  # the schema file is named like the table
        self.key_columns = ("cluster", "window_start", key)
        self.columns = ["cluster", "window_start", "window_seconds", key, "source_id", "count", "dropped"]
        super().__init__(client, embedded, tmp_dir)

    def rows_of(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        return stats_rows(record)


def split_rows(items: list[Item], n: int) -> list[list[Item]]:
    """Consecutive runs of items with about equal row counts (at most n, none empty); deterministic."""
    total = sum(it.n_rows for it in items)
    if n <= 1 or len(items) <= 1 or total == 0:
        return [items]
    out: list[list[Item]] = [[]]
    acc = 0
    for it in items:
        if out[-1] and len(out) < n and acc >= total * len(out) / n:
            out.append([])
        out[-1].append(it)
        acc += it.n_rows
    return out


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _settings_clause(settings: dict[str, Any]) -> str:
    """``SETTINGS a = 1, b = 'x' `` for an INSERT ... SELECT (applies to both halves of the query)."""
    return "SETTINGS " + ", ".join(f"{k} = {int(v) if isinstance(v, (bool, int)) else _sql_string(str(v))}"
                                   for k, v in settings.items()) + " "  # fmt: skip


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?{}[]")


@cache
def _writer_schema(fp: str, stem: str) -> dict[str, Any]:
    """The writer schema ``fp`` of the stem's record ("" = current) as plain JSON."""
    return json.loads(avro_ocf._schema_json(fp, stem))


@cache
def _structure_literal(stem: str = "event_batch", fp: str = "") -> str:
    """ClickHouse structure of a record type for input(): derived from the (writer's) Avro schema."""

    def ch(t: Any) -> str:
        if isinstance(t, dict):
            if t.get("logicalType") == "timestamp-micros":
                return "DateTime64(6)"
            kind = t["type"]
            if kind == "array":
                return f"Array({ch(t['items'])})"
            if kind == "map":
                return f"Map(String, {ch(t['values'])})"
            if kind == "record":
                return "Tuple(" + ", ".join(f"{f['name']} {ch(f['type'])}" for f in t["fields"]) + ")"
            return ch(kind)
        return {"string": "String", "int": "Int32", "long": "Int64", "boolean": "Bool", "double": "Float64",
                "float": "Float32"}[t]  # fmt: skip

    schema = _writer_schema(fp, stem)
    return _sql_string(", ".join(f"{f['name']} {ch(f['type'])}" for f in schema["fields"]))


def stats_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    sid, ws = record["source_id"], record["window_seconds"]
    return [{**r, "source_id": sid, "window_seconds": ws} for r in record["rows"]]


ALERT_COLUMNS = [
    "alert_id", "rule_id", "title", "severity", "cluster", "ts", "auditid", "stage", "username", "usergroups",
    "impersonated_username", "sourceips", "useragent", "verb", "objectref_resource", "objectref_subresource",
    "objectref_namespace", "objectref_name", "objectref_apigroup", "request_uri", "responsestatus_code", "decision",
    "decision_reason", "window_start", "count", "group_key", "tags", "source_id",
]  # fmt: skip


class AlertsWriter(ContainerWriter):
    """alerts, from Alert records (one per Kafka record), decoded by ClickHouse like events. A raw record can
    raise several alerts, so the check is by alert_id: the source watermark (the worker's ``kaudit-source-id``
    header) spares the lookup for alerts of sources never seen; the rest get an exact ``alert_id IN`` check.
    ReplacingMergeTree collapses any copy that still slips through (read with FINAL or argMax when exactness
    matters)."""

    table = "alerts"
    columns = ALERT_COLUMNS
    stem = "alert"
    array = ""  # one row per record

    def write(self, items: list[Item]) -> tuple[int, int]:
        try:
            if not self.watermark_fresh:
                self._load_watermark()
            uniq: dict[str, Item] = {}
            for it in items:
                uniq.setdefault(it.key, it)
            fresh = {a: it for a, it in uniq.items() if a not in self.recent}
            maybe = [a for a, it in fresh.items() if not self._above_watermark(it.source_id)]
            have: set[str] = set()
            for i in range(0, len(maybe), 10_000):
                res = self.client.query(
                    "SELECT DISTINCT alert_id FROM alerts WHERE alert_id IN {ids:Array(String)}",
                    parameters={"ids": maybe[i : i + 10_000]},
                )
                have.update(r[0] for r in res.result_rows)
            todo = [it for a, it in fresh.items() if a not in have]
            self.insert_values(todo, lambda it: it.key)
        except Exception:
            self.invalidate()
            raise
        self._advance(todo)
        self._remember(uniq)
        skipped = len(items) - len(todo)
        M.rows.labels(self.table).inc(len(todo))
        M.skipped.labels(self.table).inc(skipped)
        return len(todo), skipped
