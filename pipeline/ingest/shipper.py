"""Ship audit log files (log backend, AKS/EKS exports) to Kafka ``k8s-audit-raw``, following them like tail -F.

Records are chunks of complete lines, byte-exact (with their ``\\n``), at most 1 MiB or 5000 lines, keyed by
cluster. A pretty-printed JSON document spanning lines stays whole in one record. Invalid lines go to the
dead-letter topic with ``file:line`` and split the chunk around them.

Checkpoints (``$KAUDIT_VAR/shipper/<cluster>/<hash of path>.json``: file identity (dev, inode), byte offset, line
number) advance only over records Kafka acknowledged, so a crash re-sends at most the unacknowledged tail (with the
same batch id, derived from file identity and offset). Rotation: rename+create (the old file is read to its end,
also after a restart: a rotated file is found again by its inode in the same folder) and copytruncate (size below
our offset). The producer never gives up on a record (delivery.timeout.ms=0): during a Kafka outage the shipper
waits instead of skipping lines; permanent errors stop it with the checkpoint intact.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from confluent_kafka import KafkaError, Producer

from pipeline import config
from pipeline.config import Settings
from pipeline.ingest import oversize
from pipeline.ingest.bridge.server import validate_item
from pipeline.kafka import deadletter
from pipeline.kafka import headers as H
from pipeline.kafka.producer import make_producer
from pipeline.models import deepjson
from pipeline.models.readers import ParseIssue, unwrap

log = logging.getLogger("kaudit.ship")

CHUNK_BYTES = 1024 * 1024
# How the API server's JSON encoder starts every event: where an event after a cut one on the same line begins
# (unescaped, it cannot be inside a JSON string).
EVENT_START = b'{"kind":"Event","apiVersion":"audit.k8s.io/'
CHUNK_LINES = 5000
READ_BLOCK = 1024 * 1024
MAX_DOC_BYTES = 16 * 1024 * 1024  # a multi-line document larger than this is given up (dead-letter)
FORMATS = {"k8s": "jsonlines", "aks": "aks", "eks": "eks", "gke": "gke"}


class ShipError(RuntimeError):
    """Shipping cannot go on (permanent Kafka error); the checkpoint still points at acknowledged data."""


@dataclass
class Checkpoint:
    path: str
    dev: int
    ino: int
    offset: int  # bytes (decompressed for .gz) up to which everything is acknowledged
    line: int  # lines before ``offset``

    def identity(self) -> tuple[int, int]:
        return (self.dev, self.ino)


class CheckpointStore:
    def __init__(self, root: Path, cluster: str) -> None:
        self.dir = root / "shipper" / cluster
        self.dir.mkdir(parents=True, exist_ok=True)

    def file_for(self, path: str) -> Path:
        return self.dir / (hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:16] + ".json")

    def load(self, path: str) -> Checkpoint | None:
        try:
            d = orjson.loads(self.file_for(path).read_bytes())
            return Checkpoint(d["path"], d["dev"], d["ino"], d["offset"], d["line"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable checkpoint %s (%s): starting from the beginning", path, self.file_for(path), exc)
            return None

    def save(self, cp: Checkpoint) -> None:
        target = self.file_for(cp.path)
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(cp.__dict__))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)


@dataclass
class _Pending:
    ident: tuple[int, int]
    offset: int
    line: int
    acked: bool = False


@dataclass
class Stats:
    lines: int = 0
    records: int = 0
    deadletter: int = 0
    bytes: int = 0
    acked_records: int = 0
    nul_lines: int = 0  # lines with NUL bytes (a crash's padding), read piece by piece


def _is_gzip(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def find_by_identity(folder: str, ident: tuple[int, int]) -> str | None:
    """A rotated file (renamed in the same folder) found again by (dev, inode)."""
    try:
        with os.scandir(folder) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == ident and e.is_file(follow_symlinks=False):
                    return e.path
    except OSError:
        return None
    return None


@dataclass
class Cursor:
    """One followed path: the open file, what is read but not yet a unit, the record being built, and the
    records awaiting acknowledgement."""

    path: str
    f: BinaryIO | None = None
    fname: str = ""  # the file actually open (a rotated sibling while catching up)
    ident: tuple[int, int] = (0, 0)
    gz: bool = False
    pos: int = 0  # file offset of buf[0]
    line: int = 0  # lines before pos
    buf: bytes = b""
    doc: list[bytes] = field(default_factory=list)  # multi-line document being assembled
    doc_start: int = 0
    doc_line: int = 0
    doc_size: int = 0
    parts: list[bytes] = field(default_factory=list)
    rec_size: int = 0
    rec_lines: int = 0
    rec_start: int = 0
    rec_first: int = 0
    rec_end: int = 0
    rec_end_line: int = 0
    pending: deque[_Pending] = field(default_factory=deque)
    saved: tuple[tuple[int, int], int, int] | None = None
    done: bool = False  # --once: read to the end

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


class Shipper:
    def __init__(
        self, settings: Settings, cluster: str, paths: list[str], *, fmt: str = "k8s", once: bool = False,
        from_start: bool = False, producer: Producer | None = None, poll_interval: float = 0.25,
        progress: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.s = settings
        self.cluster = cluster
        self.key = cluster.encode()
        self.fmt_header = FORMATS[fmt]
        self.once = once
        self.from_start = from_start
        self.raw_topic = settings.topic(config.RAW)
        self.dlq_topic = settings.topic(config.DEADLETTER)
        self.store = CheckpointStore(settings.var, cluster)
        self.producer = producer or make_producer(settings, **{"delivery.timeout.ms": 0, "linger.ms": 20})
        self.cursors = [Cursor(p) for p in paths]
        self.poll_interval = poll_interval
        self.stats = Stats()
        self.stop_event = threading.Event()
        self.error: KafkaError | None = None
        self.progress = progress
        # a record: lines up to CHUNK_BYTES, never more than Kafka takes (a 1 MiB managed Kafka refused 1 MiB records)
        self.max_record = max(64 * 1024, settings.max_message_bytes - 64 * 1024)
        self.chunk_bytes = min(CHUNK_BYTES, self.max_record)

    # --- opening and rotation --------------------------------------------------------------------------
    def _open(self, c: Cursor, fname: str, offset: int, line: int) -> bool:
        try:
            st = os.stat(fname)
            gz = _is_gzip(fname)
            f: BinaryIO = gzip.open(fname, "rb") if gz else open(fname, "rb")  # type: ignore[assignment]
        except OSError as exc:
            if c.f is None:
                log.debug("%s: cannot open yet (%s)", fname, exc)
            return False
        if offset:
            f.seek(offset)
        c.f, c.fname, c.ident, c.gz = f, fname, (st.st_dev, st.st_ino), gz
        c.pos, c.line, c.buf = offset, line, b""
        c.doc, c.doc_size = [], 0
        log.info("%s: reading from byte %d (line %d)%s", fname, offset, line + 1, " (gzip)" if gz else "")
        return True

    def _start(self, c: Cursor) -> None:
        cp = None if self.from_start else self.store.load(c.path)
        try:
            st = os.stat(c.path)
            ident = (st.st_dev, st.st_ino)
        except OSError:
            st, ident = None, None
        if cp is not None and ident == cp.identity():
            size = st.st_size if st is not None and not _is_gzip(c.path) else None
            if size is not None and size < cp.offset:
                log.warning("%s: shorter than the checkpoint (truncated while stopped): from the start", c.path)
                self._open(c, c.path, 0, 0)
            else:
                self._open(c, c.path, cp.offset, cp.line)
            c.saved = (cp.identity(), cp.offset, cp.line)
            return
        if cp is not None:
            old = find_by_identity(os.path.dirname(os.path.abspath(c.path)) or ".", cp.identity())
            if old is not None:
                log.info("%s: rotated while stopped; finishing %s first", c.path, old)
                self._open(c, old, cp.offset, cp.line)
                c.saved = (cp.identity(), cp.offset, cp.line)
                return
            log.warning("%s: the checkpointed file (inode %d) is gone: starting the current file at 0", c.path, cp.ino)
        self._open(c, c.path, 0, 0)

    def _check_rotation(self, c: Cursor) -> None:
        """At EOF: renamed away (new file at the path) or truncated in place?"""
        try:
            st = os.stat(c.path)
        except OSError:
            return  # moved away, new one not created yet
        if (st.st_dev, st.st_ino) != c.ident:
            self._flush_record(c)
            c.fname = find_by_identity(os.path.dirname(os.path.abspath(c.path)), c.ident) or c.fname  # its new name
            self._read_available(c)  # last writes before the rename
            self._finish_file(c)
            log.info("%s: rotated (new inode %d); %s finished at byte %d", c.path, st.st_ino, c.fname, c.pos)
            c.close()
            if self._open(c, c.path, 0, 0):
                c.pending.append(_Pending(c.ident, 0, 0, acked=True))
        elif not c.gz and st.st_size < c.pos + len(c.buf):
            log.info("%s: truncated (copytruncate) at %d bytes: reading from the start", c.path, st.st_size)
            self._finish_file(c)
            c.f.seek(0)  # type: ignore[union-attr]
            c.pos, c.line, c.buf, c.doc, c.doc_size = 0, 0, b"", [], 0
            c.pending.append(_Pending(c.ident, 0, 0, acked=True))

    # --- reading -----------------------------------------------------------------------------------------
    def _read_available(self, c: Cursor, max_blocks: int = 8) -> int:
        got = 0
        for _ in range(max_blocks):
            data = c.f.read(READ_BLOCK) if c.f is not None else b""
            if not data:
                break
            got += len(data)
            self._feed(c, data)
        return got

    def _feed(self, c: Cursor, data: bytes) -> None:
        buf = c.buf + data if c.buf else data
        start = 0
        pos = c.pos
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            line = buf[start : nl + 1]
            c.line += 1
            self._line(c, line, pos + start, c.line)
            start = nl + 1
        c.buf = buf[start:]
        c.pos = pos + start

    def _finish_file(self, c: Cursor) -> None:
        """The file will not grow any more: its last line may lack a newline, a started document is incomplete."""
        if c.buf:
            c.line += 1
            line, c.buf = c.buf, b""
            self._line(c, line, c.pos, c.line)
            c.pos += len(line)
        if c.doc:
            self._bad(c, b"".join(c.doc), c.doc_line, c.pos, c.line, "incomplete JSON document at end of file")
            c.doc, c.doc_size = [], 0
        self._flush_record(c)

    # --- units: lines and documents ----------------------------------------------------------------------
    def _line(self, c: Cursor, line: bytes, off: int, ln: int) -> None:
        self.stats.lines += 1
        end = off + len(line)
        if c.doc:
            c.doc.append(line)
            c.doc_size += len(line)
            if line[:1] in (b"}", b"]"):
                data = b"".join(c.doc)
                c.doc, c.doc_size = [], 0
                try:
                    doc = deepjson.loads(data)
                except orjson.JSONDecodeError as exc:
                    self._bad(c, data, c.doc_line, end, ln, f"invalid JSON document: {exc}")
                    return
                self._unit(c, data, doc, c.doc_start, c.doc_line, end, ln)
            elif c.doc_size > MAX_DOC_BYTES:
                data = b"".join(c.doc)
                c.doc, c.doc_size = [], 0
                self._bad(c, data, c.doc_line, end, ln, f"JSON document over {MAX_DOC_BYTES} bytes without an end")
            return
        if b"\0" in line:
            # NUL bytes: the padding a crash leaves in a log file (a block allocated, never written), after which
            # the API server appends again, often on the same line. Each piece between NUL runs is read on its
            # own: the events after the padding are stored, a piece the crash cut is dead-lettered.
            self.stats.nul_lines += 1
            pieces = [x for x in re.split(rb"\0+", line) if x.strip()]
            log.warning("%s:%d: %d NUL byte(s) skipped (a crash's padding?); %d piece(s) read", c.fname, ln,
                        line.count(b"\0"), len(pieces))  # fmt: skip
            for x in pieces or [b"\n"]:
                self._single(c, x if x.endswith(b"\n") else x + b"\n", off, ln, end, documents=False)
            return
        self._single(c, line, off, ln, end)

    def _single(self, c: Cursor, line: bytes, off: int, ln: int, end: int, documents: bool = True) -> None:
        """One line (or a piece of one): ``documents`` False = an unfinished object is bad, not the first line of
        a pretty-printed document (a piece a crash cut would otherwise swallow the lines after it)."""
        stripped = line.strip()
        if not stripped:
            self._good(c, line, off, ln, end, ln)
            return
        try:
            doc = deepjson.loads(line)  # as deep as Go writes it (a PATCH body is logged as it came)
        except orjson.JSONDecodeError as exc:
            if documents and stripped[:1] in (b"{", b"[") and not stripped.endswith((b"}", b"]")):
                c.doc, c.doc_start, c.doc_line, c.doc_size = [line], off, ln, len(line)  # pretty-printed document
                return
            at = line.find(EVENT_START, 1)
            if at > 0:  # a crash cut this line's event and the restarted API server wrote on after it
                self._bad(c, line[:at] + b"\n", ln, end, ln, f"invalid JSON (an event cut short?): {exc}")
                self._single(c, line[at:], off, ln, end, documents=False)
                return
            self._bad(c, line, ln, end, ln, f"invalid JSON: {exc}")
            return
        self._unit(c, line, doc, off, ln, end, ln)

    def _unit(self, c: Cursor, data: bytes, doc: Any, start: int, first: int, end: int, last: int) -> None:
        reason = None
        for item in unwrap(doc, first):
            reason = item.reason if isinstance(item, ParseIssue) else validate_item(item.event)
            if reason:
                break
        if (reason or len(data) > self.max_record) and self._by_item(c, data, doc, start, first, end, last):
            return
        if reason:
            self._bad(c, data, first, end, last, reason)
        elif len(data) > self.max_record:
            # one plain Event: stored without its objects (pipeline/ingest/oversize.py), the original dead-lettered
            small = oversize.truncate(data, self.max_record - 1) if isinstance(doc, dict) and "auditID" in doc else None
            if small is not None:
                self._good(c, small + b"\n", start, first, end, last)
            why = oversize.REASON if small is None else oversize.REASON_TRUNCATED
            self._bad(c, data, first, end, last, f"{why} ({len(data)} bytes: larger than the largest Kafka record)")
        else:
            self._good(c, data, start, first, end, last)

    def _by_item(self, c: Cursor, data: bytes, doc: Any, start: int, first: int, end: int, last: int) -> bool:
        """An EventList document with a bad item, or too large for a record: each item on its own, as the bridge
        takes such a batch (its exact bytes as a line; a bad one dead-lettered, one too large stored without its
        objects), instead of one dead letter for every event in it. False: not such a document."""
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") in (None, "EventList") else None
        if not isinstance(items, list) or len(items) < 2 and len(data) <= self.max_record:
            return False
        spans = deepjson.item_spans(data)
        if spans is None or len(spans) != len(items):
            return False
        for (a, b), item in zip(spans, items, strict=True):
            self._unit(c, data[a:b] + b"\n", item, start, first, end, last)
        return True

    def _good(self, c: Cursor, data: bytes, start: int, first: int, end: int, last: int) -> None:
        n = last - first + 1
        if c.parts and (c.rec_size + len(data) > self.chunk_bytes or c.rec_lines + n > CHUNK_LINES):
            self._flush_record(c)
        if not c.parts:
            c.rec_start, c.rec_first = start, first
        c.parts.append(data)
        c.rec_size += len(data)
        c.rec_lines += n
        c.rec_end, c.rec_end_line = end, last

    def _bad(self, c: Cursor, data: bytes, first: int, end: int, last: int, reason: str) -> None:
        self._flush_record(c)
        value, hdrs = deadletter.record(
            reason, "shipper", data, cluster=self.cluster, origin=f"{c.fname}:{first}", limit=self.s.max_message_bytes
        )
        self.stats.deadletter += 1
        log.warning("%s:%d: %s (to the dead-letter topic)", c.fname, first, reason)
        self._produce(c, self.dlq_topic, value, hdrs, end, last)

    def _flush_record(self, c: Cursor) -> None:
        if not c.parts:
            return
        value = b"".join(c.parts) if len(c.parts) > 1 else c.parts[0]
        batch_id = hashlib.sha1(f"{c.ident[0]}:{c.ident[1]}:{c.rec_start}".encode()).hexdigest()[:24]
        hdrs = H.make(
            cluster=self.cluster, received_at=time.time_ns() // 1000, source="file", batch_id=batch_id,
            format=self.fmt_header, file=os.path.abspath(c.fname), first_line=c.rec_first,
        )  # fmt: skip
        self.stats.records += 1
        self.stats.bytes += len(value)
        self._produce(c, self.raw_topic, value, hdrs, c.rec_end, c.rec_end_line)
        c.parts, c.rec_size, c.rec_lines = [], 0, 0

    def _produce(self, c: Cursor, topic: str, value: bytes, hdrs: list, end: int, last: int) -> None:
        p = _Pending(c.ident, end, last)

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                self.error = err
            else:
                p.acked = True
                self.stats.acked_records += 1

        while True:
            try:
                self.producer.produce(topic, value=value, key=self.key, headers=hdrs, on_delivery=on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
        c.pending.append(p)  # only once produced: a refused record must not be waited for
        self.producer.poll(0)

    # --- checkpoints -------------------------------------------------------------------------------------
    def _advance(self, c: Cursor, force: bool = False) -> None:
        last = None
        while c.pending and c.pending[0].acked:
            last = c.pending.popleft()
        if last is None:
            return
        state = (last.ident, last.offset, last.line)
        if state != c.saved:
            self.store.save(Checkpoint(c.path, last.ident[0], last.ident[1], last.offset, last.line))
            c.saved = state

    def _check_error(self) -> None:
        if self.error is not None:
            raise ShipError(f"Kafka refused a record: {self.error} (checkpoints keep the last acknowledged position)")

    # --- main loops --------------------------------------------------------------------------------------
    def run(self) -> Stats:
        for c in self.cursors:
            self._start(c)
        last_progress = time.monotonic()
        try:
            while not self.stop_event.is_set():
                busy = False
                for c in self.cursors:
                    if c.done:
                        continue
                    if c.f is None:
                        if not self.once and self._open(c, c.path, 0, 0):
                            c.pending.append(_Pending(c.ident, 0, 0, acked=True))
                        elif self.once:
                            c.done = True
                        continue
                    if self._read_available(c):
                        busy = True
                        continue
                    if self.once or c.gz:
                        self._finish_file(c)
                        c.done = True
                        c.close()
                        continue
                    self._flush_record(c)  # nothing more right now: send what we have
                    self._check_rotation(c)
                self.producer.poll(0 if busy else self.poll_interval)
                self._check_error()
                for c in self.cursors:
                    self._advance(c)
                if self.progress and time.monotonic() - last_progress >= 2.0:
                    last_progress = time.monotonic()
                    self.progress(self.progress_line())
                if self.once and all(c.done for c in self.cursors):
                    break
        finally:
            self._drain()
        return self.stats

    def _drain(self) -> None:
        """Wait for acknowledgements of what was sent (bounded), then save the final checkpoints."""
        deadline = time.monotonic() + (3600 if self.once else 30)
        while any(not p.acked for c in self.cursors for p in c.pending) and self.error is None:
            if time.monotonic() > deadline:
                log.warning("stopping with unacknowledged records: they will be sent again next time")
                break
            self.producer.poll(0.1)
        for c in self.cursors:
            self._advance(c)
            c.close()
        self._check_error()

    def progress_line(self) -> str:
        parts = []
        for c in self.cursors:
            if c.f is None and not c.done:
                continue
            try:
                size = os.path.getsize(c.fname) if not c.gz else None
            except OSError:
                size = None
            pct = f" ({100 * c.pos / size:.0f}%)" if size else ""
            parts.append(f"{os.path.basename(c.fname)} {c.pos >> 20} MiB{pct}")
        st = self.stats
        return (
            f"ship: {st.lines} lines, {st.records} records ({st.acked_records} acked), {st.deadletter} dead-letter; "
            + ", ".join(parts)
        )

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
