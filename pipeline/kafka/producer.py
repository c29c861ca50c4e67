"""confluent-kafka producers: one configuration for the whole project, and an asyncio wrapper whose
``send`` resolves only when Kafka acknowledged the record (acks=all, idempotent)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.config import Settings, get_settings


def producer_config(s: Settings | None = None, **overrides: Any) -> dict[str, Any]:
    s = s or get_settings()
    cfg: dict[str, Any] = {
        "bootstrap.servers": s.kafka_bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        "batch.size": 4 * 1024 * 1024,
        "compression.type": s.kafka_compression,
        "message.max.bytes": s.max_message_bytes,
        "queue.buffering.max.kbytes": 1024 * 1024,
        "delivery.timeout.ms": 120_000,
    }
    cfg.update(overrides)
    return cfg


def make_producer(s: Settings | None = None, **overrides: Any) -> Producer:
    return Producer(producer_config(s, **overrides))


class AsyncProducer:
    """Producer for asyncio code: a background thread polls delivery reports and resolves futures on the
    loop, so the loop never blocks on Kafka."""

    def __init__(self, s: Settings | None = None, **overrides: Any) -> None:
        self._producer = make_producer(s, **overrides)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="kafka-poll", daemon=True)
        self._thread.start()

    @property
    def raw(self) -> Producer:
        return self._producer

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> asyncio.Future[Message]:
        """Queue one record; the returned future completes with the acknowledged Message or fails."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Message] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                loop.call_soon_threadsafe(_fail, fut, KafkaException(err))
            else:
                loop.call_soon_threadsafe(_ok, fut, msg)

        kwargs: dict[str, Any] = {"value": value, "key": key, "headers": headers, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:  # local queue full: let the poll thread drain it
                self._producer.poll(0.05)
        return fut

    def flush(self, timeout: float = 30.0) -> int:
        return self._producer.flush(timeout)

    def close(self, timeout: float = 30.0) -> int:
        left = self._producer.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=2)
        return left


def _ok(fut: asyncio.Future, msg: Message) -> None:
    if not fut.done():
        fut.set_result(msg)


def _fail(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def produce_sync(
    producer: Producer, topic: str, value: bytes, *, timeout: float = 30.0, **kwargs: Any
) -> Message:
    """Produce one record and wait for its acknowledgement (CLI tools and tests)."""
    result: dict[str, Any] = {}

    def cb(err: KafkaError | None, msg: Message) -> None:
        result["err"], result["msg"] = err, msg

    producer.produce(topic, value=value, on_delivery=cb, **kwargs)
    producer.flush(timeout)
    if "msg" not in result:
        raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT))
    if result["err"] is not None:
        raise KafkaException(result["err"])
    return result["msg"]
