"""Smoke tests of the real parts: the Kafka broker started by infra/kafka/kafka.sh and the chDB warehouse."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, TopicPartition

from pipeline import config
from pipeline.kafka.producer import make_producer, produce_sync
from pipeline.kafka.topics import ensure_topics, topic_specs
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import read_events
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS
from tests.conftest import SAMPLES


def test_topics_are_created_with_explicit_partitions(settings):
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10)
    for name, (parts, _) in topic_specs(settings).items():
        assert len(md.topics[name].partitions) == parts
    assert ensure_topics(settings) == []  # idempotent


def test_produce_and_consume_a_large_record(settings):
    topic = settings.topic(config.RAW)
    value = b"x" * (5 * 1024 * 1024)  # a full webhook batch can be tens of MiB
    msg = produce_sync(make_producer(settings), topic, value, key=b"c1", headers=[("kaudit-cluster", b"c1")])
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": uuid.uuid4().hex,
                  "fetch.max.bytes": settings.max_message_bytes, "max.partition.fetch.bytes": settings.max_message_bytes})  # fmt: skip
    c.assign([TopicPartition(topic, msg.partition(), msg.offset())])
    got = c.consume(1, timeout=20)
    c.close()
    assert got and got[0].value() == value and got[0].headers() == [("kaudit-cluster", b"c1")]


def test_warehouse_write_and_read_samples(warehouse):
    client, _s, _db = warehouse
    rows = []
    for item in read_events((SAMPLES / "audit2rbac/demo-k8s-1.8-v1beta1.log").read_bytes()):
        rec = normalize_event(item.event, "c1")
        rec["source_id"] = "0:0"
        rows.append([rec[c] for c in EVENT_INSERT_COLUMNS])
    client.insert("audit_events", rows, column_names=EVENT_INSERT_COLUMNS)
    assert client.query("SELECT count() FROM audit_events").result_rows == [(757,)]
    codes = dict(client.query("SELECT responsestatus_code, count() FROM audit_events GROUP BY 1").result_rows)
    assert codes[403] > 0 and sum(codes.values()) == 757
    rollup = client.query("SELECT sum(events) FROM events_1m").result_rows
    assert rollup == [(757,)]
