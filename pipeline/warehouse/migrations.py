"""Versioned, idempotent schema migrations, applied on start by every writer and by ``kaudit migrate``.

Each migration is a list of statements; applied versions are recorded in ``kaudit_migrations``. Statements
use IF NOT EXISTS so that a crash mid-migration can simply be re-run.

Two layouts (``Layout``; ``Settings.clickhouse_cluster``): one node (the default: the statements below as
written), or a ClickHouse cluster, where each table becomes ``<table>_local`` (Replicated*MergeTree, one copy
per replica of its shard) plus a Distributed ``<table>`` under today's name, so that the sink and every reader
keep their SQL; every DDL runs ON CLUSTER; materialized views hang on each node's local table and write into
its local rollup (named ``*_mv_local``: like the other local objects, nothing kaudit lets a reader name).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.config import Settings, get_settings

log = logging.getLogger("kaudit.migrate")

EVENT_COLUMNS = """
    cluster LowCardinality(String),
    auditid String CODEC(ZSTD(1)),
    stage LowCardinality(String),
    level String,
    verb LowCardinality(String),
    request_uri String CODEC(ZSTD(1)),
    username LowCardinality(String),
    useruid String CODEC(ZSTD(1)),
    usergroups Array(String),
    user_extra Map(String, String),
    impersonated_username LowCardinality(String),
    impersonated_groups Array(String),
    sourceips Array(String),
    useragent LowCardinality(String),
    objectref_resource LowCardinality(String),
    objectref_namespace LowCardinality(String),
    objectref_name String CODEC(ZSTD(1)),
    objectref_apigroup LowCardinality(String),
    objectref_apiversion String,
    objectref_subresource LowCardinality(String),
    objectref_uid String CODEC(ZSTD(1)),
    responsestatus_code UInt16,
    responsestatus_status String,
    responsestatus_reason String,
    responsestatus_message String CODEC(ZSTD(1)),
    decision String,
    decision_reason String CODEC(ZSTD(1)),
    annotations Map(String, String),
    request_received_ts DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    stage_ts DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    request_object String CODEC(ZSTD(3)),
    response_object String CODEC(ZSTD(3)),
    objects_truncated Bool,
    event_version String,
    extra String CODEC(ZSTD(1)),
    redacted Array(String),
    source_id String CODEC(ZSTD(1)),
    impersonation_constraint LowCardinality(String),
    authorization_verb LowCardinality(String)
"""

# LowCardinality only where queries group and filter (cluster, stage, verb, user, user agent, object kind and
# namespace). Elsewhere plain String: a LowCardinality column costs a dictionary lookup per value on every
# write, merges included, and merges of audit_events cost half as much CPU without it on the arrays, maps and
# rarely grouped columns below, for about 20% more bytes (migration 2; ``make bench-merge`` measures it).
PLAIN_STRING_COLUMNS = {
    "level": "String",
    "usergroups": "Array(String)",
    "user_extra": "Map(String, String)",
    "impersonated_groups": "Array(String)",
    "sourceips": "Array(String)",
    "objectref_apiversion": "String",
    "responsestatus_status": "String",
    "responsestatus_reason": "String",
    "decision": "String",
    "annotations": "Map(String, String)",
    "event_version": "String",
}


def event_columns_before_v2(later_columns: bool = False) -> str:
    """EVENT_COLUMNS as migration 1 created them before migration 2 existed (LowCardinality strings, arrays and
    map keys): what migration 2 converts from, for its test and ``make bench-merge`` (``later_columns``: with
    the columns later migrations added, so that today's inserts fit and only the types differ)."""
    lc = {"String": "LowCardinality(String)", "Array(String)": "Array(LowCardinality(String))",
          "Map(String, String)": "Map(LowCardinality(String), String)"}  # fmt: skip
    cols = EVENT_COLUMNS if later_columns else EVENT_COLUMNS.replace("\n    redacted Array(String),", "")  # v3
    if not later_columns:  # v17
        cols = cols.replace(",\n    impersonation_constraint LowCardinality(String),\n    authorization_verb LowCardinality(String)", "")
    for name, typ in PLAIN_STRING_COLUMNS.items():
        cols = cols.replace(f"\n    {name} {typ},", f"\n    {name} {lc[typ]},")
    return cols


# Saved searches (pipeline.searches; migration 5): one row per version, the newest (updated_at) wins; deleted hides a name.
# alert_every > 0 makes the search a query alert (evaluated by pipeline.searches.alerts).
SAVED_SEARCHES_DDL = """CREATE TABLE IF NOT EXISTS saved_searches (
    name String,
    query String,
    owner String,
    clusters Array(String),
    since String,
    alert_every UInt32,
    alert_window UInt32,
    alert_when String,
    alert_for UInt16,
    severity LowCardinality(String),
    deleted Bool,
    updated_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name"""

# Migration 7 (volume): the event's serialized size (normalize.event_size), added to audit_events.
VOLUME_EVENT_COLUMNS = {"event_bytes": "UInt32"}

# Columns the sink inserts, in order (everything above; materialized columns are computed by ClickHouse).
EVENT_INSERT_COLUMNS = [line.split()[0] for line in EVENT_COLUMNS.strip().splitlines()] + list(VOLUME_EVENT_COLUMNS)

# The volume rollup (migration 7): events, their JSON bytes and their request/response object bytes per hour and
# every dimension an audit policy can match on (plus level, stage, code and user agent), kept by a materialized
# view at ingest so `kaudit volume` and `kaudit policy suggest` never scan audit_events. Non-resource paths only
# for requests that succeeded (probes, discovery: a bounded set), user agents cut at 128 characters: a scanner's
# random paths or agents cannot blow the rollup up.
VOLUME_KEYS = (
    "cluster", "hour", "username", "verb", "objectref_apigroup", "objectref_resource", "objectref_subresource",
    "objectref_namespace", "stage", "level", "responsestatus_code", "request_path", "impersonated", "useragent",
    "usergroups",
)  # fmt: skip
# "requestObject": / "responseObject": and a comma: what an event at Metadata level no longer writes
VOLUME_SELECT = """SELECT cluster, toStartOfHour(request_received_ts) AS hour, username, verb, objectref_apigroup,
       objectref_resource, objectref_subresource, objectref_namespace, stage, level, responsestatus_code,
       if(objectref_resource = '' AND responsestatus_code < 400, left(splitByChar('?', request_uri)[1], 128), '')
           AS request_path,
       impersonated_username != '' AS impersonated, left(useragent, 128) AS useragent, usergroups,
       count() AS events, sum(event_bytes) AS bytes,
       sum(length(request_object) + length(response_object) + 17 * (request_object != '')
           + 18 * (response_object != '')) AS object_bytes
FROM audit_events"""


# --- the cluster layout --------------------------------------------------------------------------------------------
# Sharding keys of the Distributed tables. audit_events and the stats tables shard by source_id: every row of one
# raw record lives on one shard, so a source is stored whole or not at all on its shard, and the sink's dedup check
# (which reads the Distributed table, all shards) sees a source's rows together; one busy Kubernetes cluster still
# spreads over every shard (sharding by the cluster column, or by the raw partition, which follows it, would keep
# it on one). Stats rows that ReplacingMergeTree collapses share their source_id, hence their shard. alerts by
# alert_id (its ReplacingMergeTree key), saved_searches by name (read with FINAL: a name's versions on one shard).
# The rollups are written on each shard by their materialized view; their key only places direct inserts.
SHARDING_KEYS = {
    "audit_events": "cityHash64(source_id)",
    "verb_stats": "cityHash64(source_id)",
    "status_stats": "cityHash64(source_id)",
    "alerts": "cityHash64(alert_id)",
    "events_1m": "cityHash64(cluster)",
    "volume_1h": "cityHash64(cluster)",
    "saved_searches": "cityHash64(name)",
}
# One Keeper path per shard and table; {replica} names the replica within its shard (config macros).
REPLICA_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
# kaudit_migrations: one replicated table shared by every node of every shard (no {shard} in the path), so that
# whichever node a writer connects to knows what is applied; replica names must then be unique cluster-wide.
MIGRATIONS_PATH = "/clickhouse/tables/all/{database}/kaudit_migrations"
REPLICA_NAME, MIGRATIONS_REPLICA_NAME = "{replica}", "{shard}-{replica}"
# Writer sessions on a cluster (pipeline.warehouse.client): an insert into a Distributed table returns only once
# each shard stored its rows (not queued on the node for later: the sink commits Kafka offsets after the ack),
# and on a majority of the shard's replicas ('auto'; with two replicas that is both, so the dedup check, which
# may read either, sees every acknowledged source).
CLUSTER_WRITE_SETTINGS: dict[str, Any] = {"distributed_foreground_insert": 1, "insert_quorum": "auto"}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS (\w+) \(")
_ENGINE = re.compile(r"^\) ENGINE = (\w*)MergeTree(?:\((.*)\))?$", re.M)
_CREATE_VIEW = re.compile(r"^CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+) TO (\w+) AS")


@dataclass(frozen=True)
class Layout:
    """Where kaudit's tables live: ``cluster`` "" = one node (statements as written); else that cluster of the
    server's remote_servers. ``database``: the database the Distributed tables point into (the DSN's)."""

    cluster: str = ""
    database: str = "default"

    def __post_init__(self) -> None:
        # both are spliced into DDL; the database only matters (and is only checked) on a cluster
        for what, name in (("cluster", self.cluster), ("database", self.database if self.cluster else "")):
            if name and not _IDENT.fullmatch(name):
                raise ValueError(f"{what} name must be a plain identifier: {name!r}")

    @property
    def on(self) -> str:
        return f" ON CLUSTER {self.cluster}" if self.cluster else ""

    def local(self, table: str) -> str:
        """The table that holds the rows on a node (what materialized views read and write)."""
        return f"{table}_local" if self.cluster else table

    def create_table(self, ddl: str) -> list[str]:
        """A single-node CREATE TABLE as is, or its replicated local table + a Distributed table of its name."""
        if not self.cluster:
            return [ddl]
        name = _CREATE_TABLE.match(ddl)
        engine = _ENGINE.search(ddl)
        if not name or not engine:
            raise ValueError(f"not a CREATE TABLE this layout knows: {ddl[:60]!r}")
        table, local = name[1], self.local(name[1])
        args = f"'{REPLICA_PATH}', '{REPLICA_NAME}'" + (f", {engine[2]}" if engine[2] else "")
        body = _CREATE_TABLE.sub(f"CREATE TABLE IF NOT EXISTS {local}{self.on} (", ddl, count=1)
        body = _ENGINE.sub(f") ENGINE = Replicated{engine[1]}MergeTree({args})", body, count=1)
        body = body.replace("non_replicated_deduplication_window", "replicated_deduplication_window")
        dist = (f"CREATE TABLE IF NOT EXISTS {table}{self.on} AS {self.database}.{local}\n"
                f"ENGINE = Distributed('{self.cluster}', '{self.database}', '{local}', {SHARDING_KEYS[table]})")  # fmt: skip
        return [body, dist]

    def create_view(self, ddl: str, source: str) -> list[str]:
        """A materialized view: on a cluster, on each node's local ``source`` into the local target."""
        if not self.cluster:
            return [ddl]
        head = _CREATE_VIEW.match(ddl)
        if not head or not re.search(rf"\bFROM {source}\b", ddl):
            raise ValueError(f"not a CREATE MATERIALIZED VIEW this layout knows: {ddl[:60]!r}")
        # qualified: a DDL ON CLUSTER runs on each node outside the initiator's session, and the view's query is
        # resolved there
        db = self.database
        out = _CREATE_VIEW.sub(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {head[1]}_local{self.on} TO {db}.{self.local(head[2])} AS",
            ddl, count=1,
        )  # fmt: skip
        return [re.sub(rf"\bFROM {source}\b", f"FROM {db}.{self.local(source)}", out)]

    def alter(self, table: str, clauses: str, distributed: bool = True) -> list[str]:
        """ALTER TABLE: on a cluster, of the local tables and (columns) of the Distributed table too."""
        if not self.cluster:
            return [f"ALTER TABLE {table} {clauses}"]
        out = [f"ALTER TABLE {self.local(table)}{self.on} {clauses}"]
        return out + [f"ALTER TABLE {table}{self.on} {clauses}"] if distributed else out

    def bookkeeping(self) -> str:
        """The table of applied migrations."""
        engine = (f"ReplicatedMergeTree('{MIGRATIONS_PATH}', '{MIGRATIONS_REPLICA_NAME}')" if self.cluster
                  else "MergeTree")  # fmt: skip
        return (f"CREATE TABLE IF NOT EXISTS kaudit_migrations{self.on} (version UInt32, name String, "
                f"applied_at DateTime DEFAULT now()) ENGINE = {engine} ORDER BY version")  # fmt: skip

    def ttl(self, days: int) -> list[str]:
        return self.alter("audit_events", f"MODIFY TTL toDateTime(request_received_ts) + INTERVAL {int(days)} DAY",
                          distributed=False)  # fmt: skip


def layout_of(s: Settings, database: str = "default") -> Layout:
    return Layout(s.clickhouse_cluster.strip(), database)


LATENCY_ANNOTATION = "apiserver.latency.k8s.io/total"
# Go duration text ("1.5ms", "2m3.1s") -> microseconds. Each number is capped (least: migration 10): one of 400
# digits parsed as +inf, and toUInt64(inf) fails the whole insert (Code 70), which the sink retried forever.
_GO_DURATION_US = (
    "arraySum(arrayMap(p -> least(toFloat64OrZero(extract(p, '^[0-9.]+')), 1e12) * multiIf("
    "endsWith(p, 'ns'), 0.001, endsWith(p, 'us') OR endsWith(p, 'µs'), 1, endsWith(p, 'ms'), 1000, "
    "endsWith(p, 's'), 1000000, endsWith(p, 'm'), 60000000, endsWith(p, 'h'), 3600000000, 0), "
    f"extractAll(annotations['{LATENCY_ANNOTATION}'], '[0-9.]+[a-zµ]+')))"
)
# latency_us (the query language's `latency`; migration 4): the apiserver's own measure when it wrote the annotation, else
# stage_ts - request_received_ts. Stored, so percentile(latency, 99) reads a column instead of parsing text.
LATENCY_MATERIALIZED = (
    f"toUInt64(round(if(mapContains(annotations, '{LATENCY_ANNOTATION}'), {_GO_DURATION_US}, "
    "toFloat64(greatest(0, dateDiff('microsecond', request_received_ts, stage_ts))))))"
)
# latency_us's codec (migration 8): T64 keeps only the bits the values of a block use (latencies fit in ~20-30 of
# 64), then LZ4. In chDB it reads 4x cheaper than with the default compression (reading the column at 10M rows, as
# `groupby verb, percentile(latency, 99)` does: ~250 ms CPU -> ~60 ms; python -m pipeline.bench.query --compare), 25% smaller.
LATENCY_CODEC = "CODEC(T64, LZ4)"
LATENCY_COLUMN = f"latency_us UInt64 MATERIALIZED {LATENCY_MATERIALIZED} {LATENCY_CODEC}"


def _audit_column(client: Client, layout: Layout, what: str, column: str = "latency_us") -> list[Any]:
    """[(what,)] of audit_events.<column> in system.columns (the local table on a cluster), [] without it."""
    return client.query(
        f"SELECT {what} FROM system.columns WHERE database = currentDatabase() "
        "AND table = {t:String} AND name = {c:String}", parameters={"t": layout.local("audit_events"), "c": column},
    ).result_rows  # fmt: skip


def _materialize_latency(client: Client, layout: Layout) -> None:
    """Rewrite the stored latency_us values (a background mutation) when rows exist. On a cluster the database is
    always new (the layout cannot be converted to) and a count through the Distributed table would need every
    shard up: materialize there anyway (a no-op on empty parts)."""
    local = layout.local("audit_events")
    if layout.cluster or client.query(f"SELECT count() FROM {local}").result_rows[0][0]:
        for stmt in layout.alter("audit_events", "MATERIALIZE COLUMN latency_us", distributed=False):
            client.command(stmt)


def _latency_step(layout: Layout) -> Callable[[Client], None]:
    def _latency_from_annotation(client: Client) -> None:
        """Migration 4 on a table made before it: new rows get the new latency_us on insert, stored rows are
        rewritten by a background mutation. A table migration 1 made with it already is left alone (no mutation)."""
        rows = _audit_column(client, layout, "default_expression")
        if rows and "apiserver.latency.k8s.io" in rows[0][0]:
            return
        verb = "MODIFY" if rows else "ADD"
        for stmt in layout.alter("audit_events", f"{verb} COLUMN latency_us UInt64 MATERIALIZED {LATENCY_MATERIALIZED}"):
            client.command(stmt)
        _materialize_latency(client, layout)

    return _latency_from_annotation


def _codec_step(layout: Layout) -> Callable[[Client], None]:
    def _latency_codec(client: Client) -> None:
        """Migration 8: latency_us stored with LATENCY_CODEC (on a cluster: the local tables, which hold the data).
        A codec change alone is metadata (new parts, merges); rows already stored are rewritten by a background
        mutation of that one column (the same values: the column is recomputed from the row). On a fresh table
        (migration 1 creates the column without it, so that ``migrate(upto=7)`` is the schema before this one) it is
        metadata only."""
        rows = _audit_column(client, layout, "compression_codec")
        if rows and "T64" in rows[0][0]:
            return
        for stmt in layout.alter("audit_events", f"MODIFY COLUMN {LATENCY_COLUMN}", distributed=False):
            client.command(stmt)
        _materialize_latency(client, layout)

    return _latency_codec


def _latency_cap_step(layout: Layout) -> Callable[[Client], None]:
    def _latency_cap(client: Client) -> None:
        """Migration 10: latency_us's expression with each annotation number capped (see _GO_DURATION_US). Metadata
        only: a stored row holds the same value under both (a row the old one could not compute never got in)."""
        rows = _audit_column(client, layout, "default_expression")
        if rows and "least(" in rows[0][0]:
            return
        for stmt in layout.alter("audit_events", f"MODIFY COLUMN {LATENCY_COLUMN}", distributed=False):
            client.command(stmt)

    return _latency_cap


# request_received_ts's codec (migration 9). Every time range filters on it and every timeslice groups on it, so
# most queries read it whole. Delta+ZSTD read at ~16 ns a row in chDB, T64+LZ4 at ~6 (`timeslice 1h groupby
# username top 5` over 10M rows: the column read 140 -> 55 ms), for ~1.3 more bytes a row: the rows are sorted by
# hour within a part, so a 64-value block spans few bits. stage_ts keeps Delta+ZSTD (rarely read, and unsorted
# it packs worse).
TIME_CODEC = "CODEC(T64, LZ4)"


def _time_codec_step(layout: Layout) -> Callable[[Client], None]:
    def _time_codec(client: Client) -> None:
        """Migration 9: request_received_ts stored with TIME_CODEC. Metadata only: new parts and every merge write
        it with the new codec. Parts stored before keep theirs until a merge rewrites them (ClickHouse refuses to
        materialize a sort-key column, and a forced rewrite of a large table would be hours of I/O); both read the
        same values."""
        rows = _audit_column(client, layout, "compression_codec", "request_received_ts")
        if rows and "T64" in rows[0][0]:
            return
        for stmt in layout.alter("audit_events", f"MODIFY COLUMN request_received_ts DateTime64(6, 'UTC') {TIME_CODEC}",
                                 distributed=False):  # fmt: skip
            client.command(stmt)

    return _time_codec


def _migrations(ttl_days: int, layout: Layout = Layout()) -> list[tuple[int, str, list[Any]]]:
    ttl = f"TTL toDateTime(request_received_ts) + INTERVAL {ttl_days} DAY" if ttl_days > 0 else ""
    table, view, alter = layout.create_table, layout.create_view, layout.alter
    return [
        (
            1,
            "events, stats, alerts, rollups",
            [
                *table(f"""CREATE TABLE IF NOT EXISTS audit_events ({EVENT_COLUMNS},
    latency_us UInt64 MATERIALIZED {LATENCY_MATERIALIZED},
    INDEX idx_auditid auditid TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_username username TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_name objectref_name TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_source source_id TYPE bloom_filter(0.001) GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toYYYYMM(request_received_ts)
ORDER BY (cluster, toStartOfHour(request_received_ts), verb, objectref_resource, request_received_ts)
{ttl}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000"""),
                *table("""CREATE TABLE IF NOT EXISTS verb_stats (
    cluster LowCardinality(String),
    window_start DateTime64(6, 'UTC'),
    window_seconds UInt32,
    verb LowCardinality(String),
    source_id String,
    count UInt64,
    dropped UInt64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (cluster, window_start, verb, source_id)
SETTINGS non_replicated_deduplication_window = 10000"""),
                *table("""CREATE TABLE IF NOT EXISTS status_stats (
    cluster LowCardinality(String),
    window_start DateTime64(6, 'UTC'),
    window_seconds UInt32,
    code UInt16,
    source_id String,
    count UInt64,
    dropped UInt64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (cluster, window_start, code, source_id)
SETTINGS non_replicated_deduplication_window = 10000"""),
                *table("""CREATE TABLE IF NOT EXISTS alerts (
    alert_id String,
    rule_id LowCardinality(String),
    title String,
    severity LowCardinality(String),
    cluster LowCardinality(String),
    ts DateTime64(6, 'UTC'),
    auditid String,
    stage LowCardinality(String),
    username LowCardinality(String),
    usergroups Array(LowCardinality(String)),
    impersonated_username LowCardinality(String),
    sourceips Array(LowCardinality(String)),
    useragent LowCardinality(String),
    verb LowCardinality(String),
    objectref_resource LowCardinality(String),
    objectref_subresource LowCardinality(String),
    objectref_namespace LowCardinality(String),
    objectref_name String,
    objectref_apigroup LowCardinality(String),
    request_uri String CODEC(ZSTD(1)),
    responsestatus_code UInt16,
    decision LowCardinality(String),
    decision_reason String,
    window_start DateTime64(6, 'UTC'),
    count UInt64,
    group_key String,
    tags Array(LowCardinality(String)),
    source_id String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (cluster, rule_id, alert_id)
SETTINGS non_replicated_deduplication_window = 1000"""),
                *table("""CREATE TABLE IF NOT EXISTS events_1m (
    cluster LowCardinality(String),
    minute DateTime('UTC'),
    verb LowCardinality(String),
    objectref_resource LowCardinality(String),
    responsestatus_code UInt16,
    events UInt64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (cluster, minute, verb, objectref_resource, responsestatus_code)
SETTINGS non_replicated_deduplication_window = 10000"""),
                *view("""CREATE MATERIALIZED VIEW IF NOT EXISTS events_1m_mv TO events_1m AS
SELECT cluster, toStartOfMinute(request_received_ts) AS minute, verb, objectref_resource,
       responsestatus_code, count() AS events
FROM audit_events
GROUP BY cluster, minute, verb, objectref_resource, responsestatus_code""", "audit_events"),
            ],
        ),
        (
            2,
            "audit_events: plain String where LowCardinality only made writes and merges dearer",
            # a no-op on a table migration 1 created with these types; on an older one, a background mutation
            alter("audit_events", ", ".join(f"MODIFY COLUMN {name} {typ}" for name, typ in PLAIN_STRING_COLUMNS.items())),
        ),
        (
            3,
            "audit_events.redacted: the credential fields kaudit replaced by hashes (pipeline/redaction)",
            # a no-op on a table migration 1 created with it; older rows read as [] (nothing was flagged then)
            alter("audit_events", "ADD COLUMN IF NOT EXISTS redacted Array(String) AFTER extra"),
        ),
        (
            4,
            "audit_events.latency_us from the apiserver.latency.k8s.io/total annotation (query language: latency)",
            [_latency_step(layout)],
        ),
        (
            5,
            "saved searches and query alerts (pipeline.searches)",
            table(SAVED_SEARCHES_DDL),
        ),
        (
            6,
            "audit_events: Kubernetes 1.35+ impersonation_constraint and the Forbidden message's authorization_verb",
            alter(
                "audit_events",
                "ADD COLUMN IF NOT EXISTS impersonation_constraint LowCardinality(String) "
                "AFTER source_id, ADD COLUMN IF NOT EXISTS authorization_verb LowCardinality(String) "
                "AFTER impersonation_constraint",
            ),
        ),
        (
            7,
            "volume: audit_events.event_bytes and the hourly volume rollup",
            [
                *alter("audit_events", ", ".join(f"ADD COLUMN IF NOT EXISTS {n} {t}" for n, t in VOLUME_EVENT_COLUMNS.items())),
                *table("""CREATE TABLE IF NOT EXISTS volume_1h (
    cluster LowCardinality(String),
    hour DateTime('UTC'),
    username LowCardinality(String),
    verb LowCardinality(String),
    objectref_apigroup LowCardinality(String),
    objectref_resource LowCardinality(String),
    objectref_subresource LowCardinality(String),
    objectref_namespace LowCardinality(String),
    stage LowCardinality(String),
    level LowCardinality(String),
    responsestatus_code UInt16,
    request_path LowCardinality(String),
    impersonated Bool,
    useragent LowCardinality(String),
    usergroups Array(LowCardinality(String)),
    events UInt64,
    bytes UInt64,
    object_bytes UInt64
) ENGINE = SummingMergeTree((events, bytes, object_bytes))
PARTITION BY toYYYYMM(hour)
ORDER BY ("""
                + ", ".join(VOLUME_KEYS)
                + """)
SETTINGS non_replicated_deduplication_window = 10000"""),
                *view(f"CREATE MATERIALIZED VIEW IF NOT EXISTS volume_1h_mv TO volume_1h AS {VOLUME_SELECT} GROUP BY ALL",
                      "audit_events"),
                # events stored before this migration: counted once, sizes unknown (0 bytes). Not on a cluster: its
                # layout is newer than migration 7, so there audit_events is always created empty together with it
                *([] if layout.cluster else
                  [f"INSERT INTO volume_1h {VOLUME_SELECT} WHERE (SELECT count() FROM volume_1h) = 0 GROUP BY ALL"]),
            ],
        ),
        (
            8,
            "audit_events.latency_us with CODEC(T64, LZ4): percentile/avg/sd of latency read it 4x cheaper",
            [_codec_step(layout)],
        ),
        (
            9,
            "audit_events.request_received_ts with CODEC(T64, LZ4): time ranges and timeslices read it 2.5x cheaper",
            [_time_codec_step(layout)],
        ),
        (
            10,
            "audit_events.latency_us cannot fail an insert: a Go duration of 400 digits was +inf, and toUInt64 refused it",
            [_latency_cap_step(layout)],
        ),
    ]


def migrate(client: Client, s: Settings | None = None, upto: int | None = None) -> list[str]:
    """Apply pending migrations; return their names. Safe to call from every writer on start. ``upto``: only the
    versions up to it (the schema an older kaudit made: migration tests, ``make bench-query --compare``)."""
    s = s or get_settings()
    layout = Layout()
    if s.clickhouse_cluster.strip():
        if s.effective_clickhouse_dsn.startswith("chdb:"):
            raise RuntimeError("KAUDIT_CLICKHOUSE_CLUSTER needs a ClickHouse server DSN (KAUDIT_CLICKHOUSE_DSN)")
        layout = layout_of(s, client.query("SELECT currentDatabase()").result_rows[0][0])
    _check_layout(client, layout)
    client.command(layout.bookkeeping())
    done = {row[0] for row in client.query("SELECT version FROM kaudit_migrations").result_rows}
    pending = [m for m in _migrations(s.retention_days, layout) if m[0] not in done and (upto is None or m[0] <= upto)]
    if layout.cluster:  # the server's parser first: nothing half-applied on the cluster because of a typo
        for stmt in (st for _, _, sts in pending for st in sts if not callable(st)):
            client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": stmt})
    applied = []
    for version, name, statements in pending:
        for stmt in statements:  # SQL, or a function of the client for a migration that must look first
            stmt(client) if callable(stmt) else client.command(stmt)
        client.insert("kaudit_migrations", [[version, name]], column_names=["version", "name"])
        log.info("applied migration %d: %s", version, name)
        applied.append(f"{version}: {name}")
    if s.retention_days > 0:  # TTL can change after the fact: keep it in line with the setting
        for stmt in layout.ttl(s.retention_days):
            client.command(stmt)
    return applied


def _check_layout(client: Client, layout: Layout) -> None:
    """Refuse to migrate a database laid out the other way (one node vs cluster): the bookkeeping would call it
    up to date and every writer would then write into the wrong kind of table. There is no conversion."""
    rows = client.query(
        "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'audit_events'"
    ).result_rows
    if not rows:
        return
    distributed = rows[0][0] == "Distributed"
    if layout.cluster and not distributed:
        raise RuntimeError(
            f"KAUDIT_CLICKHOUSE_CLUSTER={layout.cluster} but this database holds single-node kaudit tables "
            f"(audit_events is {rows[0][0]}); use a new database for the cluster layout (no conversion)"
        )
    if not layout.cluster and distributed:
        raise RuntimeError(
            "this database holds kaudit's cluster layout (audit_events is Distributed): set KAUDIT_CLICKHOUSE_CLUSTER"
        )


def migration_statements(s: Settings, database: str = "default") -> list[str]:
    """Every statement a migration of an empty database runs, for ``kaudit migrate --print`` (steps that look at
    the database first print as a comment)."""
    layout = layout_of(s, database)
    out = [layout.bookkeeping()]
    for version, name, statements in _migrations(s.retention_days, layout):
        out.append(f"-- migration {version}: {name}")
        for stmt in statements:
            out.append(f"-- ({stmt.__name__}: decided on the live table; nothing on a fresh one)"
                       if callable(stmt) else stmt)  # fmt: skip
        out.append(f"INSERT INTO kaudit_migrations (version, name) VALUES ({version}, {_sql_string(name)})")
    if s.retention_days > 0:
        out.extend(layout.ttl(s.retention_days))
    return out


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def syntax_error(stmt: str, run: Callable[[str, dict[str, Any]], Any] | None = None) -> str | None:
    """ClickHouse's parser on one statement (``formatQuerySingleLine``): None if it parses, else the error.
    ``run(sql, params)``: a client's query; default in-memory chDB (``kaudit migrate --print``: no server)."""
    try:
        if run is not None:
            run("SELECT formatQuerySingleLine({q:String})", {"q": stmt})
        else:
            import chdb

            chdb.query(f"SELECT formatQuerySingleLine({_sql_string(stmt)})", "TSV")
    except Exception as exc:  # noqa: BLE001 - the engine's message is the answer
        return str(exc).strip().splitlines()[0][:500]
    return None
