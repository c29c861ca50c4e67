"""The sink process: plain confluent-kafka consumer (one group, four topics) -> batches -> ClickHouse.

Threads: the consumer thread polls Kafka and builds batches (bounded by rows, bytes and time; an idle writer
gets a batch at a quarter of the rows); the writer thread writes a batch to every table, and only then are its
offsets committed. While the writer is busy (or retrying because ClickHouse is down) the consumer keeps filling
the next batch; when that one is full too, it pauses its partitions and keeps polling so the group does not
evict it. The consumer reads only record headers (source_id, row count, alert_id); ClickHouse decodes the Avro
of events, stats and alerts itself, in C++ (see tables.py). Nothing here runs on an asyncio loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from pipeline import config
from pipeline.config import Settings
from pipeline.kafka import deadletter
from pipeline.kafka import headers as H
from pipeline.kafka.producer import make_producer, produce_sync
from pipeline.models.avro import H_FP, H_SCHEMA, AvroDecodeError, codec, decode_record, header_value
from pipeline.sinks.avro_ocf import HeaderError, known_fps, read_batch_header, read_rows_header, read_string
from pipeline.sinks.metrics import M
from pipeline.sinks.tables import INSERT_SETTINGS, AlertsWriter, EventsWriter, Item, StatsWriter
from pipeline.volume.rollup import reconcile_volume
from pipeline.warehouse.client import WarehouseLockedError, is_embedded, open_client
from pipeline.warehouse.migrations import migrate

log = logging.getLogger("kaudit.sink")

EAGER_FRACTION = 4  # an idle writer takes a batch at max_rows / EAGER_FRACTION rows (see Sink.run)

# ClickHouse error codes that mean "these bytes are bad", not "the warehouse is unavailable".
DATA_ERROR_CODES = (
    "Code: 27.",
    "Code: 33.",
    "Code: 117.",
    "Code: 6.",
    "Code: 69.",
    "Code: 53.",
    "Code: 70.",
    "Code: 748.",
)


@dataclass
class SinkOptions:
    group: str = "kaudit-sink"
    max_rows: int | None = None  # None: Settings.sink_batch_rows
    max_bytes: int = 128 * 1024 * 1024
    max_seconds: float | None = None  # None: Settings.sink_batch_seconds
    backoff_max: float = 30.0


@dataclass
class Batch:
    items: dict[str, list[Item]] = field(
        default_factory=lambda: {"events": [], "verb": [], "status": [], "alerts": []}
    )
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # next offset to commit
    dead: list[tuple[bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.offsets)


class Sink:
    def __init__(
        self, s: Settings, opts: SinkOptions | None = None, stop: threading.Event | None = None
    ) -> None:
        self.s = s
        opts = opts or SinkOptions()
        self.opts = replace(opts, max_rows=opts.max_rows or s.sink_batch_rows,
                            max_seconds=s.sink_batch_seconds if opts.max_seconds is None else opts.max_seconds)  # fmt: skip
        self.stop = stop or threading.Event()
        self.embedded = is_embedded(s.effective_clickhouse_dsn)
        self.topics = {
            s.topic(config.EVENTS): "events",
            s.topic(config.VERB_STATS): "verb",
            s.topic(config.STATUS_STATS): "status",
            s.topic(config.ALERTS): "alerts",
        }
        self.client = None
        self.writers: dict[str, Any] = {}
        self._queue: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        self._done: queue.Queue[Batch] = queue.Queue()  # written batches whose offsets the consumer commits
        self._producer = None
        self._consumer: Consumer | None = None
        self.committed_batches = 0
        self.error: BaseException | None = None
        self._m_records = {kind: M.records.labels(kind) for kind in self.topics.values()}

    # --- warehouse -----------------------------------------------------------------------------------
    def open_warehouse(self) -> bool:
        """Open the warehouse and apply migrations, retrying with backoff (path locked, server down)."""
        delay = 0.5
        while not self.stop.is_set():
            try:
                client = open_client(self.s)
                migrate(client, self.s)
            except WarehouseLockedError as exc:
                M.retries.labels("locked").inc()
                M.warehouse_up.set(0)
                log.warning("%s; retrying in %.1fs", exc, delay)
            except Exception as exc:  # noqa: BLE001 - server down, network, ...
                M.retries.labels("unavailable").inc()
                M.warehouse_up.set(0)
                log.warning(
                    "warehouse %s unavailable (%s); retrying in %.1fs", _dsn_label(self.s), _short(exc), delay
                )
            else:
                M.warehouse_up.set(1)
                self.client = client
                tmp = self.s.var / "sink-tmp"
                self.writers = {
                    "events": EventsWriter(client, self.embedded, tmp, self.s.sink_read_threads),
                    "verb": StatsWriter(client, "verb_stats", "verb", self.embedded, tmp),
                    "status": StatsWriter(client, "status_stats", "code", self.embedded, tmp),
                    "alerts": AlertsWriter(client, self.embedded, tmp),
                }
                log.info("warehouse %s open", _dsn_label(self.s))
                if self.embedded:
                    self._check_clean_shutdown(client)
                return True
            self.stop.wait(delay)
            delay = min(delay * 2, self.opts.backoff_max)
        return False

    @property
    def _marker(self) -> Any:
        import hashlib

        tag = hashlib.sha1(self.s.effective_clickhouse_dsn.encode()).hexdigest()[:12]
        return self.s.var / "sink-tmp" / f"running-{tag}"

    def _check_clean_shutdown(self, client: Any) -> None:
        """Embedded mode: if the last sink on this path died (kill -9), an insert may have stored its audit_events
        part but not the part its materialized view writes to events_1m; add what the rollup lacks. Safe here
        because this process is the only writer of the path."""
        marker = self._marker
        if marker.exists():
            added = reconcile_rollup(client)
            added_volume = reconcile_volume(client)
            log.warning(
                "previous sink on this warehouse did not stop cleanly; events_1m reconciled (+%d events), "
                "volume_1h (+%d)", added, added_volume,
            )  # fmt: skip
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("running\n")

    def _mark_clean(self) -> None:
        if self.embedded and self.error is None:
            self._marker.unlink(missing_ok=True)

    # --- consumer side -------------------------------------------------------------------------------
    def _consumer_config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.s.kafka_bootstrap,
            "group.id": self.opts.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": self.s.fetch_max_bytes,
            "max.partition.fetch.bytes": self.s.fetch_max_bytes,
            "max.poll.interval.ms": 600_000,
            "session.timeout.ms": 10_000,
            "queued.max.messages.kbytes": 256 * 1024,
            # the broker answers a fetch once it has this much or waited this long: a few fetches per second
            # instead of one per record the workers produce (each costs the broker ~0.6 ms of CPU here)
            "fetch.min.bytes": 1024 * 1024,
            "fetch.wait.max.ms": 250,
        }

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", _fmt_parts(partitions))
        for w in self.writers.values():  # another process may have written these partitions meanwhile
            w.invalidate()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s; finishing the batch in flight", _fmt_parts(partitions))
        self._pending = Batch()  # uncommitted: the next owner reads it again (and skips what is stored)
        self._backlog.clear()
        self._paused = False
        deadline = time.monotonic() + 60
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._queue.unfinished_tasks:
            log.warning("batch still in flight after 60s at rebalance; the next owner will deduplicate")
        self._commit_done()

    def route(self, msg: Message, batch: Batch) -> None:
        """Turn one Kafka record into an Item of its table, or a dead-letter record."""
        topic = msg.topic()
        kind = self.topics[topic]
        value = msg.value() or b""
        headers = msg.headers() or []
        batch.offsets[(topic, msg.partition())] = msg.offset() + 1
        batch.bytes += len(value)
        self._m_records[kind].inc()
        try:  # only a few header fields are read here; ClickHouse decodes the rows (see tables.py)
            stem = STEMS[kind]
            name = header_value(headers, H_SCHEMA)
            if name and name != codec(stem).name:
                raise AvroDecodeError(f"schema {name} on the {stem} topic")
            fp = header_value(headers, H_FP) or ""
            if fp and fp not in known_fps(stem):
                raise AvroDecodeError(f"unknown writer schema fingerprint {fp} for {codec(stem).name}")
            key = ""
            span = None
            try:
                if kind == "events":
                    h = read_batch_header(value)
                    n, sid = h.n_events, h.source_id
                    if h.events_start >= 0:
                        span = (h.events_start, h.events_end)
                elif kind == "alerts":  # alert_id is the record's first field; the worker names the source
                    key, n, sid = read_string(value, 0)[0], 1, header_value(headers, H.SOURCE_ID) or ""
                    if not sid:
                        raise HeaderError("no source header")
                else:
                    sid, n = read_rows_header(value)
            except HeaderError:
                rec = decode_record(stem, value, headers)  # raises if really broken
                sid = rec["source_id"]
                n = 1 if kind == "alerts" else len(rec["events" if kind == "events" else "rows"])
                key = rec["alert_id"] if kind == "alerts" else ""
            it = Item(topic, msg.partition(), msg.offset(), value, sid, n, fp, key=key, span=span)
        except Exception as exc:  # noqa: BLE001 - bad input never stops the sink
            self._dead(batch, f"cannot decode: {exc}", msg)
            return
        batch.items[kind].append(it)
        batch.rows += it.n_rows

    def _dead(self, batch: Batch, reason: str, msg: Message) -> None:
        key = msg.key()
        origin = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
        log.warning("dead-letter %s: %s", origin, reason)
        batch.dead.append(
            deadletter.record(
                reason,
                "sink",
                msg.value() or b"",
                cluster=(key or b"").decode("utf-8", "replace"),
                origin=origin,
                limit=self.s.max_message_bytes,
            )
        )

    def run(self) -> int:
        """Consume until stop is set. Returns 0, or 1 if the writer died."""
        if self.client is None and not self.open_warehouse():
            return 0
        consumer = Consumer(self._consumer_config(), logger=logging.getLogger("kaudit.sink.kafka"))
        self._consumer = consumer
        consumer.subscribe(list(self.topics), on_assign=self._on_assign, on_revoke=self._on_revoke)
        writer = threading.Thread(target=self._writer_loop, name="sink-writer", daemon=True)
        writer.start()
        self._pending = Batch()
        self._backlog: deque[Message] = deque()
        self._paused = False
        log.info("consuming %s as group %s (batches of %d rows / %.1fs)", ", ".join(self.topics), self.opts.group,
                 self.opts.max_rows, self.opts.max_seconds)  # fmt: skip
        try:
            while not self.stop.is_set() and self.error is None:
                self._commit_done()
                if (
                    self._backlog and not self._paused
                ):  # backpressure: stop fetching, keep polling for the group
                    consumer.pause(consumer.assignment())
                    self._paused = True
                self._backlog.extend(
                    consumer.consume(num_messages=1000 if self._backlog else 5000, timeout=0.1)
                )
                b = self._pending
                # an idle writer gets a batch as soon as it holds a quarter of max_rows: the first rows after
                # a start or a quiet spell go in early, while a busy writer lets batches grow to max_rows
                idle = not self._queue.unfinished_tasks
                limit = max(1, self.opts.max_rows // EAGER_FRACTION) if idle else self.opts.max_rows
                while self._backlog and b.rows < limit and b.bytes < self.opts.max_bytes:
                    msg = self._backlog.popleft()
                    err = msg.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("kafka: %s", err)
                        continue
                    if not len(b):
                        b.started = time.monotonic()
                    self.route(msg, b)
                full = b.rows >= limit or b.bytes >= self.opts.max_bytes
                due = len(b) and time.monotonic() - b.started >= self.opts.max_seconds
                if full or due:
                    try:
                        self._queue.put_nowait(b)
                        self._pending = Batch()
                    except queue.Full:
                        pass
                if self._paused and not self._backlog:
                    consumer.resume(consumer.assignment())
                    self._paused = False
        finally:
            if self.error is None and len(self._pending):
                self._queue.put(self._pending)
            self._queue.put(None)
            writer.join(timeout=None if self.error is None else 1)
            self._commit_done()
            consumer.close()
            if not self._queue.unfinished_tasks:
                self._mark_clean()
        return 1 if self.error else 0

    # --- writer side ---------------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        try:
            while True:
                batch = self._queue.get()
                try:
                    if batch is None:
                        return
                    if self._write_until_done(batch):
                        self._done.put(batch)
                finally:
                    self._queue.task_done()
        except BaseException as exc:  # noqa: BLE001
            log.exception("sink writer died")
            self.error = exc

    def _write_until_done(self, batch: Batch) -> bool:
        delay = 0.2
        while True:
            t0 = time.perf_counter()
            try:
                self._write(batch)
                M.insert_seconds.observe(time.perf_counter() - t0)
                M.warehouse_up.set(1)
                return True
            except Exception as exc:  # noqa: BLE001
                M.warehouse_up.set(0)
                if _data_error(exc) and (self._quarantine(batch) or self._try_isolate(batch)):
                    continue  # bad records removed: retry at once
                M.retries.labels("insert").inc()
                log.warning("insert failed (%s); retrying in %.1fs, nothing is committed", _short(exc), delay)
                if self.stop.wait(delay):
                    log.warning(
                        "stopping with an unwritten batch; it stays uncommitted and is read again on start"
                    )
                    return False
                delay = min(delay * 2, self.opts.backoff_max)

    def _write(self, batch: Batch) -> None:
        if batch.dead:
            if self._producer is None:
                self._producer = make_producer(self.s)
            for value, headers in batch.dead:
                produce_sync(self._producer, self.s.topic(config.DEADLETTER), value, headers=headers)
            M.deadletter.inc(len(batch.dead))
            batch.dead = []
        total = 0
        took = []
        for kind in ("events", "verb", "status", "alerts"):
            items = batch.items[kind]
            if items:
                t0 = time.perf_counter()
                inserted, skipped = self.writers[kind].write(items)
                took.append(f"{kind} {inserted} in {time.perf_counter() - t0:.3f}s")
                total += inserted
                if skipped:
                    log.info("%s: %d source(s) already stored, skipped", self.writers[kind].table, skipped)
                batch.items[kind] = []  # done: a retry of this batch must not write it again
        log.debug("batch written: %d rows (%s)", total, ", ".join(took))

    def _quarantine(self, batch: Batch) -> bool:
        """After a data error: decode every record that ClickHouse decodes (events, stats, alerts) in Python;
        move the undecodable ones to dead-letter."""
        bad = []
        for kind, stem in STEMS.items():
            for it in batch.items[kind]:
                if not it.value:
                    continue
                try:
                    codec(stem).decode(it.value, it.fp or None)
                except Exception as exc:  # noqa: BLE001
                    bad.append((kind, it, exc))
        for kind, it, exc in bad:
            batch.items[kind].remove(it)
            origin = f"{it.topic}:{it.partition}:{it.offset}"
            log.warning("dead-letter %s: %s", origin, exc)
            batch.dead.append(deadletter.record(f"cannot decode: {exc}", "sink", it.value, origin=origin,
                                                limit=self.s.max_message_bytes))
        return bool(bad)

    def _isolate(self, batch: Batch) -> bool:
        """After a data error that no record's decoding explains (every record decodes, yet ClickHouse refuses a
        value, e.g. one a column's expression cannot compute): write each table's records in halves until those
        it refuses are alone; they become dead-letter records and the rest is stored. Without this the sink
        retried the batch forever and stored nothing more, for any cluster."""
        refused: list[tuple[Item, BaseException]] = []
        for kind in ("events", "verb", "status", "alerts"):
            if batch.items[kind]:
                refused += self._bisect(kind, batch.items[kind])
                batch.items[kind] = []  # stored, or refused below
        for it, exc in refused:
            origin = f"{it.topic}:{it.partition}:{it.offset}"
            log.error("dead-letter %s: ClickHouse refuses it (%s); the rest of the batch is stored", origin, _short(exc))
            batch.dead.append(deadletter.record(f"ClickHouse refused it: {_short(exc)}", "sink", it.value,
                                                origin=origin, limit=self.s.max_message_bytes))  # fmt: skip
        return bool(refused)

    def _try_isolate(self, batch: Batch) -> bool:
        try:
            return self._isolate(batch)
        except Exception as exc:  # noqa: BLE001 - e.g. the warehouse went away meanwhile: retry the batch
            log.warning("could not isolate the refused records (%s); retrying the batch", _short(exc))
            return False

    def _bisect(self, kind: str, items: list[Item]) -> list[tuple[Item, BaseException]]:
        """Write ``items``; on a data error, each half on its own. Returns the records refused alone."""
        try:
            self.writers[kind].write(items)
            return []
        except Exception as exc:  # noqa: BLE001 - anything but a data error goes up: the batch is retried
            if not _data_error(exc):
                raise
            if len(items) == 1:
                return [(items[0], exc)]
            mid = len(items) // 2
            return self._bisect(kind, items[:mid]) + self._bisect(kind, items[mid:])

    def _commit_done(self) -> None:
        """Commit the offsets of written batches, on the consumer's thread (librdkafka can stall a synchronous
        commit issued from another thread while this one sits in consume())."""
        while True:
            try:
                batch = self._done.get_nowait()
            except queue.Empty:
                return
            self._commit(batch)

    def _commit(self, batch: Batch) -> None:
        if not batch.offsets or self._consumer is None:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # noqa: BLE001 - e.g. rebalanced away: the new owner skips what is stored
            log.warning(
                "offset commit failed (%s); the rows are stored, a re-read will skip them", _short(exc)
            )
            return
        M.batches.inc()
        self.committed_batches += 1


STEMS = {"events": "event_batch", "verb": "verb_stats", "status": "status_stats", "alerts": "alert"}


ROLLUP_KEYS = "cluster, minute, verb, objectref_resource, responsestatus_code"


def reconcile_rollup(client: Any) -> int:
    """Insert into events_1m the counts that audit_events has and the rollup lacks; returns events added."""
    missing = (
        f"SELECT {ROLLUP_KEYS}, a.n - r.n AS events FROM "
        "(SELECT cluster, toDateTime(toStartOfMinute(request_received_ts), 'UTC') AS minute, verb, objectref_resource, "
        "responsestatus_code, count() AS n FROM audit_events GROUP BY ALL) AS a "
        f"LEFT JOIN (SELECT {ROLLUP_KEYS}, sum(events) AS n FROM events_1m GROUP BY ALL) AS r USING ({ROLLUP_KEYS}) "
        "WHERE a.n > r.n"
    )
    added = client.query(f"SELECT sum(events) FROM ({missing})").result_rows[0][0] or 0
    if added:
        client.command(
            f"INSERT INTO events_1m ({ROLLUP_KEYS}, events) {missing}", settings=INSERT_SETTINGS
        )
    return int(added)


def _data_error(exc: BaseException) -> bool:
    return any(c in str(exc) for c in DATA_ERROR_CODES)


def _fmt_parts(parts: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in parts) or "nothing"


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _dsn_label(s: Settings) -> str:
    dsn = s.effective_clickhouse_dsn
    return dsn.split("@")[-1] if "@" in dsn else dsn
