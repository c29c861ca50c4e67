"""The faust-streaming worker: consume raw records, run the Processor, produce outputs, then let faust commit.

Per-record faust overhead is paid per raw record (a webhook batch of up to 400+ events), and records are taken
in groups (``stream.take_events``); every output of a group is acknowledged by Kafka (acks=all, idempotent
confluent-kafka producer) before faust may acknowledge -- and so commit -- the group's raw offsets. A crash
therefore replays records whose outputs may already exist, and the Processor re-emits identical outputs
(same source_id, same alert ids), which the sink and the alerts table absorb.

``handle`` never returns before that holds, because faust acknowledges a group however its handler ends
(``take_events`` acks in a ``finally``): a failed rebuild is retried, outputs Kafka did not acknowledge are sent
again (one raw record at a time, until they land), outputs Kafka refuses for good (too large, invalid) become a
dead-letter record naming the raw record, and anything else ends the process at once, before faust can commit.

No faust tables or windows: state lives in ``PartitionState`` and is rebuilt from the events topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from faust.types import TP

from pipeline import config
from pipeline.agents.filters import NoiseFilter
from pipeline.agents.memory import decode_update
from pipeline.agents.metrics import WorkerMetrics
from pipeline.agents.processor import Processor, RecordOutput
from pipeline.agents.rules import RuleSet
from pipeline.agents.state import PartitionState
from pipeline.config import Settings
from pipeline.gc_tuning import tune_gc
from pipeline.kafka import deadletter
from pipeline.kafka import headers as H
from pipeline.kafka.producer import AsyncProducer
from pipeline.models.avro import H_FP, codec, header_value

log = logging.getLogger("kaudit.worker")

STATS_PARTITION = 0  # every stats record, see Worker.send
SEND_EVERY = 8  # raw records whose outputs are queued to Kafka together (see Worker._send_all)
RETRY_MAX_SECONDS = 10.0  # backoff cap while Kafka does not take a rebuild read or a group's outputs
# Delivery errors that no retry can fix: the record itself is refused (its size, its format).
PERMANENT_DELIVERY_ERRORS = frozenset(
    {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG_SIZE}
)


def rebuild_state(
    s: Settings, proc: Processor, partition: int, resume_offset: int, now: float | None = None
) -> PartitionState:
    """Read the events topic partition back from ``now - dedup_horizon_seconds`` (blocking: run in a thread).

    Every event key read back is marked seen at its source offset; threshold counts are rebuilt from events
    whose source offset lies before ``resume_offset`` (the records after it are about to be replayed)."""
    now = time.time() if now is None else now
    state = PartitionState(partition, s.dedup_horizon_seconds, compact=s.native, memory_max_keys=s.memory_max_keys)
    if proc.rules is not None and proc.rules.has_memory:
        rebuild_memory(s, proc, state, resume_offset)
    topic = s.topic(config.EVENTS)
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"{s.topic_prefix}kaudit-worker-rebuild",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.max.bytes": s.fetch_max_bytes,
            "receive.message.max.bytes": s.fetch_max_bytes + 1024 * 1024,
        }
    )
    started = time.perf_counter()
    n_records = n_keys = 0
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        if high <= low:
            return state
        start_ms = int((now - s.dedup_horizon_seconds) * 1000)
        found = c.offsets_for_times([TopicPartition(topic, partition, start_ms)], timeout=30)[0]
        start = found.offset if found.offset >= 0 else high
        if start >= high:
            return state
        c.assign([TopicPartition(topic, partition, start)])
        cdc = codec("event_batch")
        done = False
        while not done:
            for msg in c.consume(500, timeout=1.0):
                if msg.error():
                    if msg.error().code() == -191:  # _PARTITION_EOF
                        done = True
                        continue
                    raise RuntimeError(f"rebuild read of {topic}[{partition}] failed: {msg.error()}")
                if msg.offset() >= high - 1:
                    done = True
                try:
                    batch = cdc.decode(msg.value(), header_value(msg.headers(), H_FP))
                    src = int(batch["source_id"].rpartition(":")[2])
                except Exception as exc:  # noqa: BLE001 - a foreign record must not block startup
                    log.warning("rebuild: skipping unreadable record %s[%d]@%d: %s", topic, partition, msg.offset(), exc)
                    continue
                seen_at = msg.timestamp()[1] / 1000
                cluster = batch["cluster"]
                n_records += 1
                for ev in batch["events"]:
                    state.seen.add((ev["cluster"] or cluster, ev["auditid"], ev["stage"]), src, seen_at)
                    if src < resume_offset:
                        proc.replay_thresholds(state, ev, seen_at)
                    n_keys += 1
                for k in batch.get("dropped_keys") or ():
                    state.seen.add((cluster, k["auditid"], k["stage"]), src, seen_at)
                    n_keys += 1
    finally:
        c.close()
    log.info(
        "partition %d: dedup state rebuilt from %s (%d records, %d keys, horizon %ds) in %.2fs; resuming at raw offset %d",
        partition, topic, n_records, n_keys, s.dedup_horizon_seconds, time.perf_counter() - started, resume_offset,
    )  # fmt: skip
    return state


def rebuild_memory(s: Settings, proc: Processor, state: PartitionState, resume_offset: int) -> None:
    """Read the memory topic partition whole (it is compacted) and keep, per key, the value written by the
    highest source offset below ``resume_offset``: the memory as it was before the first record to replay."""
    topic = s.topic(config.MEMORY)
    known = set(proc.memory_horizons)
    c = Consumer(
        {
            "bootstrap.servers": s.kafka_bootstrap,
            "group.id": f"{s.topic_prefix}kaudit-worker-rebuild",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    started = time.perf_counter()
    n = skipped = 0
    mem = state.memory
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, state.partition), timeout=30)
        if high <= low:
            return
        c.assign([TopicPartition(topic, state.partition, low)])
        done = False
        while not done:
            for msg in c.consume(2000, timeout=1.0):
                if msg.error():
                    if msg.error().code() == -191:  # _PARTITION_EOF
                        done = True
                        continue
                    raise RuntimeError(f"rebuild read of {topic}[{state.partition}] failed: {msg.error()}")
                if msg.offset() >= high - 1:
                    done = True
                if msg.value() is None:
                    continue
                try:
                    src, owner, value = decode_update(msg.value())
                except Exception as exc:  # noqa: BLE001 - a foreign record must not block startup
                    log.warning("rebuild: skipping unreadable memory record %s[%d]@%d: %s", topic, state.partition, msg.offset(), exc)
                    continue
                if src >= resume_offset or owner[0] not in known:
                    skipped += 1  # to be replayed (and re-written), or a rule that is gone
                    continue
                mem.load(msg.key(), src, value, owner)
                n += 1
    finally:
        c.close()
    forgotten = mem.forget(proc.memory_horizons)
    log.info(
        "partition %d: memory rebuilt from %s (%d records, %d skipped, %d keys, %d no longer needed) in %.2fs",
        state.partition, topic, n, skipped, len(mem), forgotten, time.perf_counter() - started,
    )  # fmt: skip


JSON_HEADERS = [("content-type", b"application/json")]


def _err(err: KafkaError | KafkaException) -> str:
    e = err.args[0] if isinstance(err, KafkaException) and err.args else err
    return f"{e.name()}: {e.str()}" if isinstance(e, KafkaError) else str(e)


def exit_now(code: int) -> None:
    """End the process without running faust's shutdown (which would acknowledge the group in hand)."""
    logging.shutdown()
    os._exit(code)


class GroupAck:
    """Delivery reports of one group of outputs, counted in librdkafka's callback thread: one asyncio wakeup per
    group instead of a future per record. ``wait`` returns when every queued record was acknowledged and
    raises the first delivery error (like ``asyncio.gather`` over per-record futures)."""

    __slots__ = ("loop", "pending", "error", "lock", "done", "sealed", "_cb")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.done = loop.create_future()
        self.sealed = False
        self._cb = self._on_delivery

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        with self.lock:
            self.pending -= 1
            if err is not None and self.error is None:
                self.error = KafkaException(err)
            finished = self.sealed and self.pending == 0
        if finished:
            self.loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def producer(self, raw: Producer) -> Any:
        """A produce(topic, value, key, headers, partition) function counted by this group."""
        cb = self._cb
        lock = self.lock

        def produce(topic: str, value: bytes, key: bytes | None, headers: Any, partition: int | None) -> None:
            with lock:
                self.pending += 1
            while True:
                try:
                    if partition is None:
                        raw.produce(topic, value=value, key=key, headers=headers, on_delivery=cb)
                    else:
                        raw.produce(topic, value=value, key=key, headers=headers, partition=partition, on_delivery=cb)
                    return
                except BufferError:  # local queue full: the poll thread drains it
                    time.sleep(0.01)
                except BaseException:
                    with lock:
                        self.pending -= 1
                    raise

        return produce

    async def wait(self) -> None:
        with self.lock:
            self.sealed = True
            finished = self.pending == 0
        if finished:
            self._finish()
        await self.done
        if self.error is not None:
            raise self.error


class Worker:
    """Owns the faust app, the processor, per-partition state, the producer and the liveness file."""

    def __init__(
        self,
        s: Settings,
        rules: RuleSet,
        noise: NoiseFilter | None = None,
        *,
        worker_id: str = "0",
        take: int = 32,
        within: float | None = None,
    ) -> None:
        self.s = s
        self.worker_id = worker_id
        self.proc = Processor(s, rules, noise)
        self.states: dict[int, PartitionState] = {}
        self.take, self.within = take, s.worker_group_seconds if within is None else within
        self.producer: AsyncProducer | None = None
        self.t_events = s.topic(config.EVENTS)
        self.t_verb = s.topic(config.VERB_STATS)
        self.t_status = s.topic(config.STATUS_STATS)
        self.t_alerts = s.topic(config.ALERTS)
        self.t_alerts_json = s.topic(config.ALERTS_JSON)
        self.t_dead = s.topic(config.DEADLETTER)
        self.t_memory = s.topic(config.MEMORY)
        self.h_events = codec("event_batch").headers
        self.h_verb = codec("verb_stats").headers
        self.h_status = codec("status_stats").headers
        self.h_alert = codec("alert").headers
        self.totals = {"records": 0, "events": 0, "kept": 0, "duplicates": 0, "dropped": 0, "bad": 0, "alerts": 0,
                       "deadletters": 0}
        self.metrics = WorkerMetrics()
        self.timing = {"processing_s": 0.0, "ack_wait_s": 0.0}  # where the handling time goes (liveness file)
        self.last_processed = 0.0
        self.first_handled = 0.0  # when the first raw record group started (benchmarks: exact rates)
        self.alive_path = Path(s.var) / f"worker-{worker_id}.alive"
        self._last_log = (time.monotonic(), 0)
        self.app = self._make_app()

    # ------------------------------------------------------------------------------------------ faust
    def _make_app(self) -> faust.App:
        s = self.s
        datadir = Path(s.var) / "faust" / f"worker-{self.worker_id}"
        datadir.mkdir(parents=True, exist_ok=True)
        app = faust.App(
            f"{s.topic_prefix}kaudit-worker",
            broker=f"kafka://{s.kafka_bootstrap}",
            store="memory://",
            web_enabled=False,
            web_bind="127.0.0.1",
            topic_partitions=s.raw_partitions,
            topic_disable_leader=True,
            processing_guarantee="at_least_once",
            datadir=str(datadir),
            consumer_auto_offset_reset="earliest",
            consumer_max_fetch_size=16 * 1024 * 1024,
            broker_commit_every=1000,
            broker_commit_interval=1.0,
            stream_buffer_maxsize=256,
            broker_session_timeout=10,  # a killed worker's partitions move on within ~10 s
            broker_heartbeat_interval=1,
            stream_recovery_delay=0,
        )
        raw = app.topic(
            s.topic(config.RAW),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=s.raw_partitions,
        )

        @app.agent(raw, name="kaudit-worker-raw")
        async def process_raw(stream: faust.StreamT) -> None:
            async for events in stream.take_events(self.take, within=self.within):
                try:
                    await self.handle([e.message for e in events])
                except Exception:  # noqa: BLE001 - faust would ack (and commit) the group on the way out
                    log.critical("worker %s: a group of %d raw record(s) could not be handled; exiting without "
                                 "acknowledging it, so the next owner of its partitions replays it", self.worker_id,
                                 len(events), exc_info=True)  # fmt: skip
                    exit_now(70)

        @app.on_partitions_revoked.connect
        async def on_revoked(sender: Any, revoked: set, **kwargs: Any) -> None:
            raw_topic = s.topic(config.RAW)
            for tp in revoked:
                if tp.topic == raw_topic and self.states.pop(tp.partition, None) is not None:
                    log.info("partition %d revoked: state dropped", tp.partition)
                if tp.topic == raw_topic:
                    self.metrics.forget(tp.partition)

        @app.on_partitions_assigned.connect
        async def on_assigned(sender: Any, assigned: set, **kwargs: Any) -> None:
            raw_topic = s.topic(config.RAW)
            parts = sorted(tp.partition for tp in assigned if tp.topic == raw_topic)
            log.info("assigned raw partitions %s (state is rebuilt on each partition's first record)", parts)

        @app.timer(interval=2.0)
        async def housekeeping() -> None:
            now = time.time()
            for st in self.states.values():
                st.expire(now)
            await asyncio.get_running_loop().run_in_executor(None, self.write_alive)
            self.refresh_gauges()
            self._maybe_log()

        if s.worker_metrics_port:

            @app.task
            async def serve_metrics() -> None:
                try:
                    await self.start_metrics_server(s.api_host, s.worker_metrics_port)
                except OSError as exc:  # port taken: say so, keep processing (metrics are not worth an outage)
                    log.error("worker %s: cannot serve metrics on %s:%d: %s", self.worker_id, s.api_host,
                              s.worker_metrics_port, exc)  # fmt: skip

        self.process_raw = process_raw
        return app

    # ------------------------------------------------------------------------------------------ work
    async def handle(self, messages: list[Any]) -> None:
        """Process a group of raw records and return only once Kafka acknowledged every output (or, for a record
        whose outputs it refuses for good, a dead-letter record saying so)."""
        if self.producer is None:
            self.producer = AsyncProducer(self.s)
        loop = asyncio.get_running_loop()
        acks = GroupAck(loop)
        t0 = time.perf_counter()
        if not self.first_handled:
            self.first_handled = time.time()
        outs: list[RecordOutput] = []
        group: list[tuple[Any, RecordOutput]] = []
        failed: KafkaException | None = None
        before = dict(self.totals)
        for m in messages:
            st = self.states.get(m.partition)
            if st is None:
                st = await self._rebuild(m.partition, m.offset)
            headers = m.headers or []
            if isinstance(headers, dict):
                headers = list(headers.items())
            ts = m.timestamp
            out = self.proc.process(st, m.offset, m.key, m.value, headers, int(ts * 1000) if ts else None)
            outs.append(out)
            group.append((m, out))
            if len(outs) >= SEND_EVERY:
                failed = self._send_all(outs, acks, failed)
        failed = self._send_all(outs, acks, failed)
        t1 = time.perf_counter()
        try:
            await acks.wait()
        except KafkaException as exc:
            failed = failed or exc
        if failed is not None:
            await self._redeliver(group, failed)
        t2 = time.perf_counter()
        self.timing["processing_s"] += t1 - t0
        self.timing["ack_wait_s"] += t2 - t1
        self.last_processed = time.time()
        m_ = self.metrics
        m_.group_seconds.observe(t1 - t0)
        m_.ack_seconds.observe(t2 - t1)
        m_.group_records.observe(len(messages))
        m_.count_group(before, self.totals, self.totals["deadletters"] - before["deadletters"])
        m_.last_processed.set(self.last_processed)

    async def _rebuild(self, partition: int, offset: int) -> PartitionState:
        """A partition's state, read back from Kafka; retried while Kafka cannot answer (a broker failing over):
        the partition's records wait, none is processed without its dedup state."""
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            r0 = time.perf_counter()
            try:
                st = await loop.run_in_executor(None, rebuild_state, self.s, self.proc, partition, offset)
            except Exception as exc:  # noqa: BLE001 - Kafka unavailable, timeouts: try again
                self.metrics.retries.labels("rebuild").inc()
                log.warning("partition %d: state rebuild failed (%s); retrying in %.1fs, its records wait",
                            partition, exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            self.states[partition] = st
            self.metrics.rebuilds.inc()
            self.metrics.rebuild_seconds.labels(str(partition)).set(time.perf_counter() - r0)
            self.metrics.rebuild_keys.labels(str(partition)).set(len(st.seen))
            return st

    def _send_all(self, outs: list[RecordOutput], acks: GroupAck, failed: KafkaException | None) -> KafkaException | None:
        """Outputs are queued a few records at a time, not one by one: librdkafka sends one produce request per
        partition (each costs the broker ~0.6 ms of CPU here), and linger.ms only merges what is queued together;
        a long group (a backlog) still has its first records in flight while the rest are processed.
        Once a produce call failed, nothing more of the group is queued: ``_redeliver`` sends it all."""
        for out in outs:
            if failed is None:
                try:
                    self.send(out, acks)
                except KafkaException as exc:
                    failed = exc
            self.count(out)
        outs.clear()
        return failed

    async def _redeliver(self, group: list[tuple[Any, RecordOutput]], error: KafkaException) -> None:
        """Send a group's outputs again, one raw record at a time, until each lands. Outputs that did land are
        sent twice: the sink skips a stored source_id and the alerts table an alert id it holds."""
        log.warning("outputs of %d raw record(s) (%s .. %s) not all acknowledged by Kafka (%s); sending them again",
                    len(group), group[0][1].source_id, group[-1][1].source_id, _err(error))  # fmt: skip
        for m, out in group:
            await self._deliver(m, out)

    async def _deliver(self, m: Any, out: RecordOutput) -> None:
        delay, attempt = 0.5, 0
        while True:
            attempt += 1
            self.metrics.retries.labels("outputs").inc()
            err = await self._attempt(lambda acks, out=out: self.send(out, acks))
            if err is None:
                return
            if err.code() in PERMANENT_DELIVERY_ERRORS:
                await self._refused(m, out, err)
                return
            log.warning("raw record %s: outputs not acknowledged (%s, attempt %d); again in %.1fs",
                        out.source_id, _err(err), attempt, delay)  # fmt: skip
            await self._maybe_replace_producer(err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _refused(self, m: Any, out: RecordOutput, err: KafkaError) -> None:
        """Kafka refuses this record's outputs for good: a dead-letter record names the raw record (it stays in the
        raw topic) and why; the partition goes on. Retried like any output while Kafka is unavailable."""
        origin = f"{self.s.topic(config.RAW)}:{m.partition}:{m.offset}"
        log.error("raw record %s (cluster %s): Kafka refused its outputs (%s); a dead-letter record says so, the raw "
                  "record stays at %s", out.source_id, out.cluster, _err(err), origin)  # fmt: skip
        self.metrics.refused.inc()
        self.totals["kept"] -= out.n_kept  # counted when processed; none of them reached the events topic
        reason = f"worker: Kafka refused the outputs of this raw record: {_err(err)}"
        data = m.value or b""
        delay = 0.5
        while True:
            dead = deadletter.record(reason, "worker", data, cluster=out.cluster, origin=origin,
                                     limit=self.s.max_message_bytes)
            e = await self._attempt(lambda acks, dead=dead: self._send_dead(dead, out.cluster, acks))
            if e is None:
                self.totals["deadletters"] += 1
                return
            if e.code() in PERMANENT_DELIVERY_ERRORS and data:
                data = b""  # the dead letter itself is too large: keep the reason and the origin
                continue
            if e.code() in PERMANENT_DELIVERY_ERRORS:
                log.error("raw record %s: the dead-letter record was refused too (%s); the raw record stays at %s",
                          out.source_id, _err(e), origin)  # fmt: skip
                return
            await self._maybe_replace_producer(e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _send_dead(self, dead: tuple[bytes, list[tuple[str, bytes]]], cluster: str, acks: GroupAck) -> None:
        assert self.producer is not None
        acks.producer(self.producer.raw)(self.t_dead, dead[0], cluster.encode(), dead[1], None)

    async def _attempt(self, queue: Any) -> KafkaError | None:
        """Queue records through ``queue(acks)`` and wait for their delivery reports: the first error, or None."""
        acks = GroupAck(asyncio.get_running_loop())
        error: KafkaError | None = None
        try:
            queue(acks)
        except KafkaException as exc:
            error = exc.args[0]
        try:
            await acks.wait()
        except KafkaException as exc:
            error = error or exc.args[0]
        return error

    async def _maybe_replace_producer(self, err: KafkaError) -> None:
        """An idempotent producer that hit a fatal error refuses everything from then on: start a new one."""
        if not err.fatal() or self.producer is None:
            return
        log.error("worker %s: Kafka producer fatal error (%s): replacing the producer", self.worker_id, _err(err))
        old, self.producer = self.producer, AsyncProducer(self.s)
        await asyncio.get_running_loop().run_in_executor(None, old.close, 0)

    def send(self, out: RecordOutput, acks: GroupAck) -> None:
        """Queue every output of one raw record; ``acks`` counts their delivery reports."""
        p = self.producer
        assert p is not None
        produce = acks.producer(p.raw)
        key = out.cluster.encode()
        if out.events_value is not None:
            produce(self.t_events, out.events_value, key, self.h_events, out.partition)
        # stats go to partition 0 whatever the raw partition (pipeline/kafka/topics.py): one produce request per
        # group instead of one per raw partition; a raw partition's stats keep their order there
        if out.verb_value is not None:
            produce(self.t_verb, out.verb_value, key, self.h_verb, STATS_PARTITION)
        if out.status_value is not None:
            produce(self.t_status, out.status_value, key, self.h_status, STATS_PARTITION)
        if out.alerts:  # the source header lets the sink dedup alerts without decoding them
            h_alert = [*self.h_alert, (H.SOURCE_ID, out.source_id.encode())]
            for alert in out.alerts:
                avro, js = self.proc.encode_alert(alert)
                akey = alert.alert_id.encode()
                produce(self.t_alerts, avro, akey, h_alert, None)
                produce(self.t_alerts_json, js, akey, JSON_HEADERS, None)
        if out.memory:  # memory changes go to the raw partition's number, like the events
            h_mem = [*JSON_HEADERS, (H.SOURCE_ID, out.source_id.encode())]
            for mkey, mvalue in out.memory:
                produce(self.t_memory, mvalue, mkey, h_mem, out.partition)
        for value, headers in out.deadletters:
            produce(self.t_dead, value, key, headers, None)

    def count(self, out: RecordOutput) -> None:
        t = self.totals
        t["records"] += 1
        t["events"] += out.n_events
        t["kept"] += out.n_kept
        t["duplicates"] += out.n_dup
        t["dropped"] += out.n_dropped
        t["bad"] += out.n_bad
        t["alerts"] += len(out.alerts)
        t["deadletters"] += len(out.deadletters)
        if out.n_bad:
            log.warning("raw record %s (cluster %s): %d bad item(s) sent to the dead-letter topic", out.source_id, out.cluster, out.n_bad)

    # ------------------------------------------------------------------------------------------ ops
    def refresh_gauges(self) -> None:
        """Lag (the consumer's last fetched high watermark minus the next offset to process) and state sizes."""
        m = self.metrics
        raw_topic = self.s.topic(config.RAW)
        m.partitions.set(len(self.states))
        for p, st in list(self.states.items()):
            m.set_state(p, st, self.s.native)
            try:
                high = self.app.consumer.highwater(TP(raw_topic, p))
            except Exception:  # noqa: BLE001 - not assigned or no fetch answered yet
                high = None
            if high is not None and high >= 0:
                m.lag.labels(str(p)).set(max(0, high - (st.last_offset + 1)))

    async def start_metrics_server(self, host: str, port: int) -> Any:
        """/metrics (Prometheus text) and /healthz (JSON: 200 while the worker runs) on the faust loop."""
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        async def metrics(_req: web.Request) -> web.Response:
            self.refresh_gauges()
            return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        async def health(_req: web.Request) -> web.Response:
            return web.json_response({"ok": True, "worker_id": self.worker_id, "last_processed_at": self.last_processed or None,
                                      "partitions": sorted(self.states)})  # fmt: skip

        webapp = web.Application()
        webapp.router.add_get("/metrics", metrics)
        webapp.router.add_get("/healthz", health)
        runner = web.AppRunner(webapp, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("worker %s: metrics on http://%s:%d/metrics", self.worker_id, host, port)
        self._metrics_runner = runner
        return runner

    def write_alive(self) -> None:
        """Liveness file: JSON status; its mtime is the time the last raw record group was processed."""
        path = self.alive_path
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "heartbeat_at": time.time(),
            "last_processed_at": self.last_processed or None,
            "first_handled_at": self.first_handled or None,
            "partitions": {str(p): st.last_offset for p, st in sorted(self.states.items())},
            "totals": self.totals,
            "timing": {k: round(v, 3) for k, v in self.timing.items()},
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)
        if self.last_processed:
            os.utime(path, (self.last_processed, self.last_processed))

    def _maybe_log(self) -> None:
        t0, n0 = self._last_log
        now = time.monotonic()
        if now - t0 < 30:
            return
        n = self.totals["events"]
        if n != n0:
            log.info("%.0f events/s over the last %.0fs; totals %s", (n - n0) / (now - t0), now - t0, self.totals)
        self._last_log = (now, n)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (faust's worker handles the signals and stops the agent cleanly)."""
        worker = faust.Worker(self.app, loglevel=logging.getLogger().level or logging.INFO, quiet=True, override_logging=False)
        tune_gc()
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        else:
            code = 0
        finally:
            if self.producer is not None:
                left = self.producer.close(10)
                if left:
                    log.error("%d output record(s) not acknowledged at shutdown (they will be replayed)", left)
            try:
                self.write_alive()
            except OSError:
                pass
        log.info("worker %s stopped; totals %s", self.worker_id, self.totals)
        return code
