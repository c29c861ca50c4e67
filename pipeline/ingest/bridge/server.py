"""The webhook bridge: kube-apiserver audit webhook batches -> one Kafka raw record per batch.

Why one record per batch: the raw topic must keep what the cluster sent byte-exactly, Kafka acknowledges the
whole batch in one produce (so "2xx only after every event is acked" is one future), and downstream per-record
overhead in faust (~5-6k records/s) is paid once per 400 events instead of once per event.

Durability: 2xx only after Kafka acknowledged the raw record and every dead-letter record of the batch
(acks=all, idempotent producer). No ack within ``bridge_ack_timeout`` -> 503 + Retry-After: the apiserver resends,
and the worker deduplicates on (auditID, stage) whatever got into Kafka twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import ClientPayloadError, web
from confluent_kafka import KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline import config
from pipeline.access.browser import webhook_refusal
from pipeline.access.tls import make_ssl_context  # noqa: F401 - shared with the query API, re-exported
from pipeline.config import Settings
from pipeline.ingest import oversize
from pipeline.ingest.bridge import split
from pipeline.ingest.bridge.auth import CLUSTER_RE, Authenticator
from pipeline.ingest.bridge.metrics import BridgeMetrics
from pipeline.kafka import deadletter
from pipeline.kafka import headers as H
from pipeline.kafka.producer import AsyncProducer
from pipeline.models import deepjson
from pipeline.models.normalize import STAGES

log = logging.getLogger("kaudit.bridge")

JSON_TYPES = ("application/json", "text/json")
READ_CHUNK = 256 * 1024
# An RFC 3339 date-time prefix; the exact parse happens in the worker (2 µs/event here would cost 20 % CPU).
_TS_RE = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d")
MAX_QUEUED_FRACTION = 0.5  # answer 503 before librdkafka's local queue could fill (it would block)


class HTTPProblem(Exception):
    """An error answer: status, machine-readable reason (metrics label) and a message for humans."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers or {}


def validate_item(item: Any) -> str | None:
    """Why this EventList item cannot become a normalized event, or None. Mirrors the checks of
    ``normalize_event`` that can fail, but cheaply (no timestamp parsing, no object serialization)."""
    if not isinstance(item, dict):
        return f"item is a JSON {type(item).__name__}, not an object"
    g = item.get
    return _check(g("auditID"), g("stage"), g("requestReceivedTimestamp"), g("stageTimestamp"), g("timestamp"),
                  g("metadata"), g("user"), g("objectRef"))  # fmt: skip


def _check(audit_id: Any, stage: Any, rrt: Any, st: Any, ts: Any, meta: Any, user: Any, ref: Any) -> str | None:
    if not audit_id or not isinstance(audit_id, str):
        return "missing auditID"
    if not isinstance(stage, str) or stage not in STAGES:  # a list or object is unhashable: it raised, a 500
        return f"missing or unknown stage {str(stage)[:40]!r}"
    found = False
    for key, value in (("requestReceivedTimestamp", rrt), ("stageTimestamp", st), ("timestamp", ts)):
        if value:
            if not isinstance(value, str) or not _TS_RE.match(value):
                return f"{key} is not an RFC 3339 timestamp: {str(value)[:40]!r}"
            found = True
    if not found:
        value = meta.get("creationTimestamp") if isinstance(meta, dict) else None
        if not value:
            return "no timestamp (requestReceivedTimestamp, stageTimestamp or timestamp)"
        if not isinstance(value, str) or not _TS_RE.match(value):
            return f"metadata.creationTimestamp is not an RFC 3339 timestamp: {str(value)[:40]!r}"
    if user and not isinstance(user, dict):
        return "user is not an object"
    if ref and not isinstance(ref, dict):
        return "objectRef is not an object"
    return None


try:  # msgspec checks the fields in C and skips the rest (requestObject...): 6x faster than a full parse
    import datetime as _dt
    from typing import Annotated, Literal

    import msgspec

    # gc=False: these hold nothing that could form a cycle, and untracked they do not set off the cyclic GC,
    # which ran about once per 400-event body (and a full collection every hundred): make bench-bridge went from
    # 124-125k to 135-138k events/s
    class _Obj(msgspec.Struct, gc=False):
        """Any JSON object; its content is skipped, not materialized."""

    class _Item(msgspec.Struct, gc=False):
        auditID: Annotated[str, msgspec.Meta(min_length=1)]
        stage: Literal["RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"]
        requestReceivedTimestamp: _dt.datetime | None = None  # RFC 3339, parsed in C (stricter than _TS_RE)
        stageTimestamp: _dt.datetime | None = None
        timestamp: _dt.datetime | None = None
        user: _Obj | None = None
        objectRef: _Obj | None = None

    class _EventList(msgspec.Struct, gc=False):
        kind: Any = None
        items: list[_Item] | None = None

    _fast_decoder: Any = msgspec.json.Decoder(_EventList)
    _FAST_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError,)  # ValidationError is a subclass
except ImportError:  # pragma: no cover - optional speed-up
    _fast_decoder = None
    _FAST_ERRORS = ()


def _classify_fast(body: bytes) -> tuple[str, int, list] | None:
    """EventLists whose items are all valid (the normal case) checked by msgspec without building Python objects
    for the bodies; None = take the exact path (not an EventList, any doubtful item, or msgspec missing)."""
    if _fast_decoder is None:
        return None
    try:
        doc = _fast_decoder.decode(body)
    except (*_FAST_ERRORS, RecursionError):  # nested deeper than msgspec recurses: the exact path reads it
        return None
    items = doc.items
    if items is None or doc.kind not in (None, "EventList"):
        return None
    for it in items:
        if not (it.requestReceivedTimestamp or it.stageTimestamp or it.timestamp):
            return None  # v1beta1 metadata.creationTimestamp only, or no timestamp: the exact path decides
    return "eventlist", len(items), []


def classify(body: bytes, *, fast: bool = True) -> tuple[str, int, list[tuple[int, str, Any]]]:
    """(format, number of good events, bad items as (index, reason, item)). Raises HTTPProblem(400)."""
    quick = _classify_fast(body) if fast else None
    if quick is not None:
        return quick
    try:
        doc = deepjson.loads(body)  # as deep as Go writes it (a PATCH body is logged as it came)
    except orjson.JSONDecodeError as exc:
        raise HTTPProblem(400, "bad_json", f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HTTPProblem(400, "not_audit", f"body is a JSON {type(doc).__name__}, not an Event or EventList")
    kind = doc.get("kind")
    if "items" in doc and kind in (None, "EventList"):
        items = doc["items"]
        if items is None:
            items = []
        if not isinstance(items, list):
            raise HTTPProblem(400, "not_audit", "EventList.items is not a list")
        bad = []
        for i, item in enumerate(items):
            reason = validate_item(item)
            if reason is not None:
                bad.append((i, reason, item))
        return "eventlist", len(items) - len(bad), bad
    if kind in (None, "Event") and ("auditID" in doc or "stage" in doc):
        reason = validate_item(doc)
        if reason is not None:
            # A lone invalid Event: dead-letter it (a 4xx would only make the apiserver resend it forever).
            return "event", 0, [(-1, reason, doc)]
        return "event", 1, []
    raise HTTPProblem(400, "not_audit", f"JSON object is not an audit Event or EventList (kind={kind!r})")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The decompressed body, at most ``limit`` bytes; gzip is inflated incrementally (max_length), so a
    gzip bomb costs at most ``limit`` bytes of memory before it is refused."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "x-gzip"):
        raise HTTPProblem(415, "unsupported_encoding", f"Content-Encoding {encoding!r} not supported (gzip or none)")
    length = request.content_length
    if length is not None and length > limit:
        raise HTTPProblem(413, "too_large", f"body of {length} bytes is over the limit of {limit} bytes")
    try:
        return await _read_body(request, limit, encoding)
    except (ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise HTTPProblem(400, "incomplete_body", f"body not received completely: {exc}") from None


async def _read_body(request: web.Request, limit: int, encoding: str) -> bytes:
    if encoding in ("identity", ""):
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise HTTPProblem(413, "too_large", f"body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    out = bytearray()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    compressed = 0
    try:
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            compressed += len(chunk)
            if compressed > limit:
                raise HTTPProblem(413, "too_large", f"compressed body is over the limit of {limit} bytes")
            data = chunk
            while data:
                out += d.decompress(data, limit - len(out) + 1)
                if len(out) > limit:
                    raise HTTPProblem(
                        413, "gzip_too_large", f"gzip body inflates past the limit of {limit} bytes (refused unread)"
                    )
                data = d.unconsumed_tail
                if d.eof:  # concatenated gzip members are one stream (RFC 1952)
                    data = d.unused_data + data
                    if not data.strip(b"\0"):
                        break
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += d.flush()
    except zlib.error as exc:
        raise HTTPProblem(400, "bad_gzip", f"body is not valid gzip: {exc}") from None
    if not d.eof and (compressed or out):
        raise HTTPProblem(400, "bad_gzip", "gzip body is truncated")
    if len(out) > limit:
        raise HTTPProblem(413, "gzip_too_large", f"gzip body inflates past the limit of {limit} bytes")
    return bytes(out)


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers)


@dataclass
class BridgeOptions:
    retry_after: int = 5  # seconds, in 503 answers
    readiness_interval: float = 2.0  # seconds between Kafka metadata checks


class Bridge:
    """State of one bridge process: producer, authenticator, metrics, readiness."""

    def __init__(
        self, settings: Settings, auth: Authenticator, options: BridgeOptions | None = None, **producer_overrides: Any
    ) -> None:
        self.s = settings
        self.auth = auth
        self.opt = options or BridgeOptions()
        self.metrics = BridgeMetrics(settings.metrics_max_clusters)
        self.raw_topic = settings.topic(config.RAW)
        self.dlq_topic = settings.topic(config.DEADLETTER)
        # Messages that Kafka could not ack within the deadline stay queued a while (they may still land, the
        # worker dedups), then fail, so an outage does not pile up unbounded memory: the apiserver resends.
        self._producer_overrides = {
            "delivery.timeout.ms": int(max(30.0, settings.bridge_ack_timeout * 3) * 1000),
            "linger.ms": 2,
            **producer_overrides,
        }
        self.producer: AsyncProducer | None = None
        self.queued_bytes = 0
        self.max_queued_bytes = int(1024 * 1024 * 1024 * MAX_QUEUED_FRACTION)  # producer queue is 1 GiB
        # a batch above this is cut into several raw records (pipeline/ingest/bridge/split.py); the headroom is
        # for the key, the headers and the record overhead that Kafka's limit counts too
        self.max_record = max(64 * 1024, settings.max_message_bytes - 64 * 1024)
        self.ready = False
        self.draining = False
        self._ready_task: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.s.bridge_max_body_bytes + 1)
        app.router.add_post("/audit/{cluster}", self.handle_audit)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/metrics", self.handle_metrics)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self.producer = await loop.run_in_executor(None, lambda: AsyncProducer(self.s, **self._producer_overrides))
        await self.auth.start()
        self._ready_task = asyncio.create_task(self._readiness_loop())

    async def _on_shutdown(self, app: web.Application) -> None:
        self.draining = True

    async def _on_cleanup(self, app: web.Application) -> None:
        """Runs after in-flight requests finished: flush what is queued, stop background tasks."""
        await self.auth.stop()
        if self._ready_task:
            self._ready_task.cancel()
        if self.producer is not None:
            producer, self.producer = self.producer, None
            left = await asyncio.get_running_loop().run_in_executor(None, producer.close, 30.0)
            if left:
                log.warning("shutdown: %d record(s) still unacknowledged after 30 s (they were answered 503)", left)
            log.info("shutdown: producer flushed and closed")

    async def _readiness_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ok = await loop.run_in_executor(None, self._kafka_reachable)
            if ok != self.ready:
                log.log(logging.INFO if ok else logging.WARNING, "kafka %s", "reachable" if ok else "NOT reachable")
            self.ready = ok
            self.metrics.kafka_ready.set(1 if ok else 0)
            await asyncio.sleep(self.opt.readiness_interval)

    def _kafka_reachable(self) -> bool:
        producer = self.producer
        if producer is None:
            return False
        try:
            md = producer.raw.list_topics(self.raw_topic, timeout=2.0)
        except KafkaException:
            return False
        t = md.topics.get(self.raw_topic)
        return bool(md.brokers) and t is not None and t.error is None and bool(t.partitions)

    # --- handlers -----------------------------------------------------------------------------------
    async def handle_healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"ok": True})

    async def handle_readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return _json(503, {"ready": False, "reason": "shutting down"})
        if not self.ready:
            return _json(503, {"ready": False, "reason": f"Kafka {self.s.kafka_bootstrap} not reachable"})
        return _json(200, {"ready": True})

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_audit(self, request: web.Request) -> web.Response:
        m = self.metrics
        m.in_flight.inc()
        try:
            return await self._audit(request)
        except HTTPProblem as p:
            m.rejections.labels(p.reason).inc()
            if p.status >= 500:
                log.warning("%s %s: %s", request.method, request.path, p.message)
            else:
                log.info("%s %s from %s: %d %s", request.method, request.path, request.remote, p.status, p.message)
            return _json(p.status, {"error": p.message, "reason": p.reason}, p.headers)
        finally:
            m.in_flight.dec()

    async def _audit(self, request: web.Request) -> web.Response:
        cluster = request.match_info["cluster"]
        if not CLUSTER_RE.match(cluster):
            raise HTTPProblem(400, "bad_cluster", f"{cluster!r} is not a valid cluster name ([a-z0-9.-_], 1-63)")
        refusal = webhook_refusal(request.headers, not self.auth.enabled)
        if refusal:
            raise HTTPProblem(403, "browser", refusal)
        peercert = None
        if self.auth.mtls and request.transport is not None:
            peercert = request.transport.get_extra_info("peercert")
        decision = self.auth.check(cluster, request.headers.get("Authorization"), peercert)
        if decision.status:
            reason = "unauthorized" if decision.status == 401 else "forbidden"
            hdrs = {"WWW-Authenticate": 'Bearer realm="kaudit"'} if decision.status == 401 else None
            raise HTTPProblem(decision.status, reason, decision.reason, hdrs)
        if self.draining:
            raise HTTPProblem(503, "shutting_down", "bridge is shutting down", self._retry_headers())
        ctype = request.headers.get("Content-Type")
        if ctype is not None and request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
            raise HTTPProblem(415, "unsupported_media", f"Content-Type {request.content_type!r} (need application/json)")
        body = await read_body(request, self.s.bridge_max_body_bytes)
        received_at = time.time_ns() // 1000
        fmt, good, bad = classify(body)
        batch_id = uuid.uuid4().hex
        records: list[tuple[bytes, list[int]]] = [(body, [i for i, _, _ in bad])] if good else []
        if len(body) > self.max_record:  # larger than a Kafka record may be: cut it, never refuse it
            if fmt == "eventlist":
                parts, bad = split.split(body, self.max_record, bad)
                records = [(p.body(), p.skip) for p in parts if len(p.items) > len(p.skip)]
                good = sum(len(p.items) - len(p.skip) for p in parts)
            elif good:  # one Event larger than a record: stored without its objects, the original dead-lettered
                small = oversize.truncate(body, self.max_record)
                records, good = ([(small, [])], 1) if small is not None else ([], 0)
                bad = [(-1, split.TOO_LARGE if small is None else split.TRUNCATED, orjson.Fragment(body))]
            if len(records) > 1 or bad:
                log.info("%s: batch %s of %d bytes cut into %d records (limit %d), %d item(s) dead-lettered",
                         cluster, batch_id, len(body), len(records), self.max_record, len(bad))  # fmt: skip
        await self._produce(cluster, records, fmt, good, bad, batch_id, received_at, len(body))
        return _json(200, {"accepted": good, "deadletter": len(bad), "batch_id": batch_id, "records": len(records)})

    def _retry_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.opt.retry_after)}

    async def _produce(
        self, cluster: str, records: list[tuple[bytes, list[int]]], fmt: str, good: int,
        bad: list[tuple[int, str, Any]], batch_id: str, received_at: int, size: int,
    ) -> None:  # fmt: skip
        """``records``: the raw records of this batch (one, or its parts when it was cut) with the indexes of
        their items that the worker must skip (dead-lettered here)."""
        producer = self.producer
        if producer is None:
            raise HTTPProblem(503, "starting", "bridge is starting", self._retry_headers())
        if self.queued_bytes + size > self.max_queued_bytes:
            raise HTTPProblem(
                503, "overloaded", f"{self.queued_bytes >> 20} MiB already await Kafka acks", self._retry_headers()
            )
        key = cluster.encode()
        futs: list[asyncio.Future] = []
        for k, (value, skip) in enumerate(records):
            hdrs = H.make(
                cluster=cluster, received_at=received_at, source="webhook",
                batch_id=batch_id if len(records) == 1 else f"{batch_id}.{k}", format=fmt,
                skip_items=",".join(map(str, skip)) if skip else None,
            )  # fmt: skip
            futs.append(self._send(producer, self.raw_topic, value, key, hdrs, len(value)))
        for index, reason, item in bad:
            value, hdrs = deadletter.record(
                reason, "bridge", orjson.dumps(item), cluster=cluster,
                origin=f"webhook:{cluster}:{batch_id}" + (f"#{index}" if index >= 0 else ""), received_at=received_at,
                limit=self.s.max_message_bytes,
            )  # fmt: skip
            futs.append(self._send(producer, self.dlq_topic, value, key, hdrs, len(value)))
        if not futs:  # an empty EventList: nothing to store
            return
        t0 = time.perf_counter()
        done, pending = await asyncio.wait(futs, timeout=self.s.bridge_ack_timeout)
        if pending:
            raise HTTPProblem(
                503, "kafka_timeout", f"Kafka did not acknowledge within {self.s.bridge_ack_timeout:g} s",
                self._retry_headers(),
            )  # fmt: skip
        for f in done:
            exc = f.exception()
            if exc is not None:
                self._maybe_fatal(exc)
                raise HTTPProblem(503, "kafka_error", f"Kafka refused the batch: {exc}", self._retry_headers())
        m = self.metrics
        m.ack_latency.observe(time.perf_counter() - t0)
        m.count_batch(cluster, good, size, len(bad))

    def _send(
        self, producer: AsyncProducer, topic: str, value: bytes, key: bytes, hdrs: list[tuple[str, bytes]], size: int
    ) -> asyncio.Future:
        try:
            fut = producer.send(topic, value, key=key, headers=hdrs)
        except KafkaException as exc:  # e.g. record too large for message.max.bytes
            raise HTTPProblem(413, "kafka_refused", f"Kafka producer refused the record: {exc}") from None
        self.queued_bytes += size

        def done(_: asyncio.Future) -> None:
            self.queued_bytes -= size
            if not _.cancelled():
                _.exception()  # mark retrieved: late failures after a 503 are expected, not "never retrieved"

        fut.add_done_callback(done)
        return fut

    def _maybe_fatal(self, exc: BaseException) -> None:
        """An idempotent producer can hit a fatal error (e.g. after long outages); then it must be replaced."""
        err = exc.args[0] if exc.args else None
        if err is not None and getattr(err, "fatal", lambda: False)():
            log.error("kafka producer fatal error (%s): replacing the producer", err)
            old = self.producer
            self.producer = AsyncProducer(self.s, **self._producer_overrides)
            if old is not None:
                asyncio.get_running_loop().run_in_executor(None, old.close, 1.0)


async def serve(
    bridge: Bridge, host: str, port: int, ssl_context: ssl.SSLContext | None = None, *,
    stop: asyncio.Event | None = None, started: Any = None, shutdown_timeout: float = 35.0,
) -> None:  # fmt: skip
    """Run until ``stop`` is set (or SIGTERM/SIGINT in the main thread): then stop accepting, let in-flight
    batches finish (up to ``shutdown_timeout``), flush the producer. ``started(port)`` is called once listening."""
    import signal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (RuntimeError, ValueError):
            pass
    runner = web.AppRunner(bridge.make_app(), auto_decompress=False, shutdown_timeout=shutdown_timeout, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=1024)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    log.info(
        "listening on %s://%s:%d/audit/<cluster> (kafka %s, topic %s, auth %s)",
        "https" if ssl_context else "http", host, bound, bridge.s.kafka_bootstrap, bridge.raw_topic,
        "off" if not bridge.auth.enabled else ("tokens" if bridge.auth.tokens_file else "")
        + ("+mTLS" if bridge.auth.mtls else ""),
    )  # fmt: skip
    if started is not None:
        started(bound)
    await stop.wait()
    log.info("shutting down: no new connections, finishing in-flight batches")
    bridge.draining = True
    await runner.cleanup()
    log.info("stopped")
