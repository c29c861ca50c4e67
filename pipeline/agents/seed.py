"""Seed the memory of first-seen and sequence rules from the warehouse (``kaudit worker --seed-memory``).

For a backfill, or a new rule, the events already stored say which terms were seen and when learning began.
This reads them in event-time order, runs the memory rules on them exactly as the worker does (no alerts), and
writes the resulting memory to the ``k8s-audit-memory`` topic, on the partition the raw topic uses for each
cluster, with source offset -1: older than any raw record, so anything the workers wrote themselves wins, and a
worker picks the seed up when it next builds a partition's memory (start or restart the workers after seeding).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from pipeline import config
from pipeline.agents import memory as M
from pipeline.agents.conditions import EventView
from pipeline.agents.rules import RuleSet
from pipeline.config import Settings

log = logging.getLogger("kaudit.worker.seed")

# normalized fields a rule may read; timestamps as int us like the normalized record
SEED_COLUMNS = [
    "cluster", "auditid", "stage", "level", "verb", "request_uri", "username", "useruid", "usergroups",
    "user_extra", "impersonated_username", "impersonated_groups", "sourceips", "useragent", "objectref_resource",
    "objectref_namespace", "objectref_name", "objectref_apigroup", "objectref_apiversion", "objectref_subresource",
    "objectref_uid", "responsestatus_code", "responsestatus_status", "responsestatus_reason",
    "responsestatus_message", "decision", "decision_reason", "annotations", "request_object", "response_object",
]  # fmt: skip
PAGE = 50_000


def raw_partition(cluster: str, partitions: int) -> int:
    """The raw partition of a cluster: librdkafka's default partitioner (consistent_random: CRC32 of the key)."""
    return zlib.crc32(cluster.encode()) % partitions


def memory_sql(rules: RuleSet, cluster: str | None) -> tuple[str, dict[str, Any]]:
    """The query for events memory rules can match, oldest first (resources narrowed when every rule pins them)."""
    mem_rules = [r for r in rules.rules if r.kind in ("first_seen", "after")]
    where = ["stage_ts >= fromUnixTimestamp64Micro({since:Int64})", "stage_ts < fromUnixTimestamp64Micro({until:Int64})"]
    params: dict[str, Any] = {}
    if cluster:
        where.append("cluster = {cluster:String}")
        params["cluster"] = cluster
    if mem_rules and all(r.resources is not None for r in mem_rules):
        params["resources"] = sorted({x for r in mem_rules for x in r.resources or ()})
        where.append("objectref_resource IN {resources:Array(String)}")
    cols = ", ".join(SEED_COLUMNS)
    sql = (
        f"SELECT {cols}, toUnixTimestamp64Micro(stage_ts) AS stage_us, "
        f"toUnixTimestamp64Micro(request_received_ts) AS received_us FROM audit_events "
        f"WHERE {' AND '.join(where)} ORDER BY stage_ts, cluster, auditid, stage LIMIT {PAGE} OFFSET {{offset:UInt64}}"
    )
    return sql, params


def build_memory(rules: RuleSet, events: Iterable[dict[str, Any]], partitions: int) -> dict[int, M.Updates]:
    """partition -> the memory the memory rules build from ``events`` (normalized, oldest first)."""
    out: dict[int, M.Updates] = {}
    mems: dict[int, M.Memory] = {}
    src = M.SEED_SOURCE
    for ev in events:
        view = EventView(ev)
        matched = [r for r in rules.matches(view) if r.kind in ("first_seen", "after")]
        if not matched:
            continue
        cluster = ev["cluster"]
        p = raw_partition(cluster, partitions)
        mem = mems.setdefault(p, M.Memory())
        ups = out.setdefault(p, M.Updates())
        for r in matched:
            if r.kind == "first_seen":
                assert r.first_seen is not None
                M.first_seen_step(mem, ups, r.id, r.first_seen, view, cluster, src)
            else:
                assert r.sequence is not None
                M.sequence_after_step(mem, ups, r.parent, r.sequence, view, cluster, src)
    return out


def warehouse_events(
    query: Callable[[str, dict[str, Any]], tuple[list[str], list[list[Any]]]],
    rules: RuleSet,
    since_us: int,
    until_us: int,
    cluster: str | None = None,
) -> Iterable[dict[str, Any]]:
    sql, params = memory_sql(rules, cluster)
    offset = 0
    while True:
        cols, rows = query(sql, {**params, "since": since_us, "until": until_us, "offset": offset})
        for row in rows:
            ev = dict(zip(cols, row, strict=True))
            ev["responsestatus_code"] = int(ev["responsestatus_code"] or 0)
            ev["stage_ts"] = int(ev.pop("stage_us"))
            ev["request_received_ts"] = int(ev.pop("received_us"))
            yield ev
        if len(rows) < PAGE:
            return
        offset += PAGE


def seed_memory(
    s: Settings, rules: RuleSet, since_us: int, until_us: int, cluster: str | None = None
) -> dict[int, int]:
    """Read the warehouse, produce the memory records; partition -> records written."""
    from pipeline.kafka import headers as H
    from pipeline.kafka.producer import make_producer
    from pipeline.warehouse.reader import Warehouse

    wh = Warehouse(s, max_workers=1)
    try:
        built = build_memory(rules, warehouse_events(wh.query, rules, since_us, until_us, cluster), s.raw_partitions)
    finally:
        wh.close()
    topic = s.topic(config.MEMORY)
    producer = make_producer(s)
    errors: list[Any] = []
    written: dict[int, int] = {}
    headers = [("content-type", b"application/json"), (H.SOURCE_ID, b"seed")]
    for p, ups in built.items():
        for key, (owner, value) in ups.items():
            while True:
                try:
                    producer.produce(topic, value=M.encode_update(key, M.SEED_SOURCE, owner, value), key=key,
                                     partition=p, headers=headers,
                                     on_delivery=lambda err, _m: errors.append(err) if err else None)  # fmt: skip
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        written[p] = len(ups)
    left = producer.flush(60)
    if left or errors:
        raise RuntimeError(f"memory seed: {left} record(s) unsent, errors {errors[:3]}")
    return written
