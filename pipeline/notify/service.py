"""The notify process: alerts topic -> routing -> one delivery loop per destination -> offsets committed.

- One confluent-kafka consumer (group ``--group``), driven from a single dedicated thread (every consumer call,
  including commits, goes there; the asyncio loop only awaits it).
- Each consumed alert is routed to destinations; the ones whose state says delivered/dead-lettered are skipped
  (replays, an alert id produced twice). Every other destination gets it in its own queue: a destination that is
  down retries with backoff on its own and never holds the others' deliveries.
- A record's offset is committable when every destination it was routed to resolved it: delivered (2xx), or a
  dead-letter record (stage ``notify``) acknowledged by Kafka says why not (permanent 4xx, ``give_up_seconds``
  of retries, or ``max_pending`` backlog overflow while it fails). Commits go up to the first unresolved offset, so a crash
  replays only what some destination has not resolved, and the state turns that replay into no new requests.
- Before a request its alert ids are marked ``sending``; a replay of an id still ``sending`` is re-sent with
  ``X-Kaudit-Redelivery: 1`` (the crash may have come after the receiver got it; the ``Idempotency-Key`` header
  lets the receiver drop it; Alertmanager dedups by labels itself).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from pipeline import config
from pipeline.config import Settings
from pipeline.kafka import deadletter
from pipeline.kafka.producer import AsyncProducer
from pipeline.models.avro import decode_record
from pipeline.notify import payloads as P
from pipeline.notify.metrics import NotifyMetrics
from pipeline.notify.routing import Destination, Routing
from pipeline.notify.senders import Permanent, Retry, Sender
from pipeline.notify.state import DEADLETTER, DELIVERED, DONE, SENDING, DeliveryState

log = logging.getLogger("kaudit.notify")

TP = tuple[int, int]  # (partition, offset)
RECENT_IDS = 50_000  # per destination


class OffsetTracker:
    """Offsets of one partition in read order with the number of destinations still owing each one."""

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.remaining: dict[int, int] = {}
        self.next_commit: int | None = None

    def add(self, offset: int, owing: int) -> None:
        self.order.append(offset)
        self.remaining[offset] = owing
        if owing == 0:
            self._advance()

    def resolve(self, offset: int) -> None:
        if offset in self.remaining:
            self.remaining[offset] = max(0, self.remaining[offset] - 1)
            self._advance()

    def _advance(self) -> None:
        while self.order and self.remaining.get(self.order[0]) == 0:
            o = self.order.popleft()
            del self.remaining[o]
            self.next_commit = o + 1

    def __len__(self) -> int:
        return len(self.order)


class TokenBucket:
    """Requests per second with a burst; ``take`` sleeps (asyncio) until a token is there."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self.tokens = float(self.burst)
        self.at = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass
class Pending:
    alert: dict[str, Any]
    offsets: list[TP]
    since: float = field(default_factory=time.monotonic)
    redelivery: bool = False


class DestinationLoop:
    """Queue, grouping, rate limit, retries and dead-lettering of one destination."""

    def __init__(self, notifier: Notifier, dest: Destination, sender: Sender) -> None:
        self.n = notifier
        self.dest = dest
        self.sender = sender
        self.queue: OrderedDict[str, Pending] = OrderedDict()
        self.inflight: dict[str, Pending] = {}
        # ids resolved lately: a copy whose state lookup raced its first copy's delivery is not sent again
        self.recent: OrderedDict[str, None] = OrderedDict()
        self.wake = asyncio.Event()
        self.bucket = TokenBucket(dest.rate_per_second, dest.burst)
        self.failing = False  # the last attempt failed (retrying): only then does a full backlog overflow
        self.m_pending = notifier.metrics.pending.labels(dest.name)
        self.m_up = notifier.metrics.up.labels(dest.name)
        self.task: asyncio.Task[None] | None = None

    def offer(self, alert: dict[str, Any], tp: TP, redelivery: bool) -> None:
        aid = alert["alert_id"]
        if aid in self.recent:
            self.n.metrics.skipped.labels(self.dest.name).inc()
            self.n.resolve(*tp)
            return
        known = self.queue.get(aid) or self.inflight.get(aid)
        if known is not None:  # the same alert id twice in flight: one delivery resolves both records
            known.offsets.append(tp)
            return
        self.queue[aid] = Pending(alert, [tp], redelivery=redelivery)
        if len(self.queue) > self.dest.max_pending and self.failing:
            _, oldest = self.queue.popitem(last=False)
            reason = f"destination {self.dest.name}: backlog above max_pending={self.dest.max_pending} (down?)"
            asyncio.get_running_loop().create_task(self._dead_letter([oldest], reason, "overflow"))
        self.m_pending.set(len(self.queue) + len(self.inflight))
        self.wake.set()

    @property
    def full(self) -> bool:
        """A healthy destination with a full queue: the consumer pauses (back-pressure) instead of overflowing."""
        return not self.failing and len(self.queue) >= self.dest.max_pending

    def drop_partitions(self, parts: set[int]) -> None:
        """Revoked partitions: their records will be read again by the next owner."""
        for pend in [*self.queue.values(), *self.inflight.values()]:
            pend.offsets = [tp for tp in pend.offsets if tp[0] not in parts]

    def _take_group(self) -> list[Pending]:
        first = next(iter(self.queue.values()))
        key = P.group_key(first.alert, self.dest.group_by)
        group = [p for p in self.queue.values() if P.group_key(p.alert, self.dest.group_by) == key][: self.dest.group_max]
        for p in group:
            aid = p.alert["alert_id"]
            del self.queue[aid]
            self.inflight[aid] = p
        return group

    async def run(self) -> None:
        d = self.dest
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            oldest = next(iter(self.queue.values())).since
            wait = d.group_wait_seconds - (time.monotonic() - oldest)
            if wait > 0 and len(self.queue) < d.group_max:
                await asyncio.sleep(wait)
                continue
            group = self._take_group()
            try:
                await self._deliver(group)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug must not stop this destination; the records stay uncommitted
                log.exception("destination %s: unexpected error; the alerts stay uncommitted", d.name)
                for p in group:
                    self.inflight.pop(p.alert["alert_id"], None)
                await asyncio.sleep(1.0)
            self.m_pending.set(len(self.queue) + len(self.inflight))

    async def _deliver(self, group: list[Pending]) -> None:
        d, m = self.dest, self.n.metrics
        ids = [p.alert["alert_id"] for p in group]
        await self.n.state.mark(d.name, ids, SENDING)
        redelivery = any(p.redelivery for p in group)
        delay = d.retry_initial_seconds
        started = min(p.since for p in group)
        while True:
            await self.bucket.take()
            t0 = time.perf_counter()
            try:
                await self.sender.send([p.alert for p in group], redelivery)
            except Permanent as exc:
                m.requests.labels(d.name, "permanent").inc()
                self.m_up.set(1)  # it answered
                self.failing = False
                log.error("destination %s rejected %d alert(s): %s", d.name, len(group), exc)
                await self._dead_letter(group, f"destination {d.name}: {exc}", "rejected")
                return
            except Retry as exc:
                m.requests.labels(d.name, "retry").inc()
                self.m_up.set(0)
                self.failing = True
                if time.monotonic() - started > d.give_up_seconds:
                    await self._dead_letter(group, f"destination {d.name}: gave up after {d.give_up_seconds:.0f}s: {exc}", "gave_up")
                    return
                wait = exc.after if exc.after is not None else delay * random.uniform(0.8, 1.2)  # noqa: S311
                log.warning("destination %s: %s; retrying %d alert(s) in %.1fs", d.name, exc, len(group), wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, d.retry_max_seconds)
                redelivery = True  # a timed-out attempt may have arrived
                continue
            finally:
                m.latency.labels(d.name).observe(time.perf_counter() - t0)
            break
        m.requests.labels(d.name, "ok").inc()
        self.m_up.set(1)
        self.failing = False
        await self.n.state.mark(d.name, ids, DELIVERED)
        m.delivered.labels(d.name).inc(len(group))
        self._resolve(group)

    async def _dead_letter(self, group: list[Pending], reason: str, kind: str) -> None:
        for p in group:
            await self.n.dead_letter(p.alert, p.offsets, reason)
        await self.n.state.mark(self.dest.name, [p.alert["alert_id"] for p in group], DEADLETTER, reason)
        self.n.metrics.deadletter.labels(self.dest.name, kind).inc(len(group))
        self._resolve(group)

    def _resolve(self, group: list[Pending]) -> None:
        for p in group:
            aid = p.alert["alert_id"]
            self.inflight.pop(aid, None)
            self.recent[aid] = None
            if len(self.recent) > RECENT_IDS:
                self.recent.popitem(last=False)
            for part, off in p.offsets:
                self.n.resolve(part, off)
        self.m_pending.set(len(self.queue) + len(self.inflight))


class Notifier:
    def __init__(self, s: Settings, routing: Routing, *, group: str, windows: dict[str, int] | None = None,
                 metrics: NotifyMetrics | None = None, max_uncommitted: int = 50_000) -> None:  # fmt: skip
        self.s = s
        self.routing = routing
        self.group = group
        self.windows = windows or {}
        self.metrics = metrics or NotifyMetrics()
        self.max_uncommitted = max_uncommitted
        self.topic = s.topic(config.ALERTS)
        self.t_dead = s.topic(config.DEADLETTER)
        self.state = DeliveryState(s.var / "notify" / f"{group}.sqlite", s.notify_state_retention_days)
        self.trackers: dict[int, OffsetTracker] = {}
        self.committed: dict[int, int] = {}
        self.loops: dict[str, DestinationLoop] = {}
        self._kx = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notify-kafka")
        self._consumer: Consumer | None = None
        self._revoked: list[set[int]] = []
        self._assigned: set[int] = set()
        self._paused = False
        self.producer: AsyncProducer | None = None

    # --- Kafka (consumer thread) ---------------------------------------------------------------------
    def _make_consumer(self) -> Consumer:
        c = Consumer({
            "bootstrap.servers": self.s.kafka_bootstrap,
            "group.id": self.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10_000,
            "max.poll.interval.ms": 600_000,
            "fetch.max.bytes": self.s.fetch_max_bytes,
        })  # fmt: skip
        c.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        return c

    def _on_assign(self, c: Consumer, parts: list[TopicPartition]) -> None:
        self._assigned |= {tp.partition for tp in parts}
        log.info("assigned %s partitions %s", self.topic, sorted(tp.partition for tp in parts))

    def _on_revoke(self, c: Consumer, parts: list[TopicPartition]) -> None:
        revoked = {tp.partition for tp in parts}
        self._commit_sync(c, revoked)
        self._assigned -= revoked
        self._revoked.append(revoked)
        log.info("revoked %s partitions %s", self.topic, sorted(revoked))

    def _commit_sync(self, c: Consumer, parts: set[int] | None = None) -> None:
        offs = []
        for p, t in list(self.trackers.items()):
            if (parts is None or p in parts) and p in self._assigned and t.next_commit is not None:
                if self.committed.get(p) != t.next_commit:
                    offs.append(TopicPartition(self.topic, p, t.next_commit))
        if offs:
            try:
                c.commit(offsets=offs, asynchronous=False)
            except KafkaException as exc:
                log.warning("offset commit failed (will retry): %s", exc)
                return
            for tp in offs:
                self.committed[tp.partition] = tp.offset

    def _poll(self, pause: bool) -> list[Message]:
        c = self._consumer
        assert c is not None
        if pause != self._paused and c.assignment():
            (c.pause if pause else c.resume)(c.assignment())
            self._paused = pause
        return c.consume(500, timeout=0.5)

    def _lag(self) -> dict[int, int]:
        c = self._consumer
        assert c is not None
        out = {}
        for p in sorted(self._assigned):
            _, high = c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=5, cached=False)
            pos = self.committed.get(p)
            if pos is None:
                got = c.committed([TopicPartition(self.topic, p)], timeout=5)[0].offset
                pos = got if got >= 0 else 0
            out[p] = max(0, high - pos)
        return out

    async def _kafka(self, fn, *args):  # noqa: ANN001, ANN202 - the one thread every consumer call runs on
        return await asyncio.get_running_loop().run_in_executor(self._kx, fn, *args)

    # --- offsets -------------------------------------------------------------------------------------
    def resolve(self, partition: int, offset: int) -> None:
        t = self.trackers.get(partition)
        if t is not None:
            t.resolve(offset)

    def uncommitted(self) -> int:
        return sum(len(t) for t in self.trackers.values())

    # --- records -------------------------------------------------------------------------------------
    async def dead_letter(self, alert: dict[str, Any] | None, offsets: list[TP], reason: str, data: bytes = b"") -> None:
        """A dead-letter record (stage notify), retried until Kafka acknowledges it: only then may the
        offset be committed."""
        origin = ",".join(f"{self.topic}:{p}:{o}" for p, o in offsets)
        value, headers = deadletter.record(
            reason, "notify", orjson.dumps(alert) if alert is not None else data,
            cluster=(alert or {}).get("cluster", ""), origin=origin, limit=self.s.max_message_bytes,
        )  # fmt: skip
        headers.append(("kaudit-alert-id", (alert or {}).get("alert_id", "").encode()))
        assert self.producer is not None
        delay = 0.5
        while True:
            try:
                await self.producer.send(self.t_dead, value, key=(alert or {}).get("cluster", "").encode(), headers=headers)
                return
            except KafkaException as exc:
                log.warning("dead-letter record not acknowledged (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def _handle(self, msgs: list[Message]) -> None:
        decoded: list[tuple[Message, dict[str, Any] | None, str]] = []
        for m in msgs:
            if m.error():
                log.warning("consumer: %s", m.error())
                continue
            try:
                decoded.append((m, decode_record("alert", m.value(), m.headers()), ""))
            except Exception as exc:  # noqa: BLE001 - any bad bytes: a dead-letter record, not a crash
                decoded.append((m, None, f"undecodable alert record: {exc}"[:500]))
        if not decoded:
            return
        self.metrics.consumed.inc(len(decoded))
        known = await self.state.lookup([a["alert_id"] for _, a, _ in decoded if a is not None])
        for m, alert, err in decoded:
            p, o = m.partition(), m.offset()
            t = self.trackers.setdefault(p, OffsetTracker())
            if alert is None:
                t.add(o, 1)
                await self.dead_letter(None, [(p, o)], err, m.value() or b"")
                t.resolve(o)
                continue
            labels = P.alert_labels(alert)
            dests = self.routing.route(alert, labels)
            states = known.setdefault(alert["alert_id"], {})
            todo = []
            for name in dests:
                if states.get(name) in DONE:
                    self.metrics.skipped.labels(name).inc()
                else:
                    todo.append(name)
            t.add(o, len(todo))
            for name in todo:
                self.loops[name].offer(alert, (p, o), redelivery=states.get(name) == SENDING)
                states[name] = "queued"  # the same id later in this batch joins the queued one

    # --- main ----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, drain_seconds: float = 10.0) -> None:
        await self.state.open()
        pruned = await self.state.prune()
        if pruned:
            log.info("delivery state: %d entries older than %.0f days pruned", pruned, self.s.notify_state_retention_days)
        self.producer = AsyncProducer(self.s)
        self._consumer = await self._kafka(self._make_consumer)
        # rule windows for endsAt come from the rules; connection pool per process, per-host limit
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit_per_host=4))
        for name, dest in self.routing.destinations.items():
            sender = Sender(dest, session, self.routing.dashboard_url or self.s.notify_dashboard_url,
                            self.windows, self.s.window_seconds)  # fmt: skip
            loop = DestinationLoop(self, dest, sender)
            loop.task = asyncio.create_task(loop.run(), name=f"notify-{name}")
            self.loops[name] = loop
        log.info("notify: group %s on %s, destinations %s", self.group, self.topic, list(self.routing.destinations))
        last_commit = last_lag = 0.0
        try:
            while not stop.is_set():
                pause = self.uncommitted() >= self.max_uncommitted or any(lp.full for lp in self.loops.values())
                msgs = await self._kafka(self._poll, pause)
                while self._revoked:
                    parts = self._revoked.pop()
                    for p in parts:
                        self.trackers.pop(p, None)
                        self.committed.pop(p, None)
                    for lp in self.loops.values():
                        lp.drop_partitions(parts)
                if msgs:
                    await self._handle(msgs)
                now = time.monotonic()
                if now - last_commit >= 0.5:
                    await self._kafka(self._commit_sync, self._consumer)
                    last_commit = now
                    self.metrics.uncommitted.set(self.uncommitted())
                if now - last_lag >= 5.0:
                    last_lag = now
                    try:
                        for p, lag in (await self._kafka(self._lag)).items():
                            self.metrics.lag.labels(str(p)).set(lag)
                    except KafkaException as exc:
                        log.debug("lag: %s", exc)
        finally:
            deadline = time.monotonic() + drain_seconds
            while self.uncommitted() and time.monotonic() < deadline and any(
                lp.inflight or lp.queue for lp in self.loops.values()
            ):
                await asyncio.sleep(0.1)
            for lp in self.loops.values():
                if lp.task:
                    lp.task.cancel()
            await asyncio.gather(*(lp.task for lp in self.loops.values() if lp.task), return_exceptions=True)
            await self._kafka(self._commit_sync, self._consumer)
            await self._kafka(self._consumer.close)
            await session.close()
            left = await asyncio.get_running_loop().run_in_executor(None, self.producer.close, 10)
            if left:
                log.error("%d dead-letter record(s) not acknowledged at shutdown (they will be redone)", left)
            await self.state.close()
            self._kx.shutdown(wait=False)
            log.info("notify stopped; %d record(s) left uncommitted (replayed next time)", self.uncommitted())
