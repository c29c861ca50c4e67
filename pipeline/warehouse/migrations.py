"""Versioned, idempotent schema migrations, applied on start by every writer and by ``kaudit migrate``.

Each migration is a list of statements; applied versions are recorded in ``kaudit_migrations``. Statements
use IF NOT EXISTS so that a crash mid-migration can simply be re-run.
"""

from __future__ import annotations

import logging
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


LATENCY_ANNOTATION = "apiserver.latency.k8s.io/total"
# Go duration text ("1.5ms", "2m3.1s") -> microseconds.
_GO_DURATION_US = (
    "arraySum(arrayMap(p -> toFloat64OrZero(extract(p, '^[0-9.]+')) * multiIf("
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
# `groupby verb, percentile(latency, 99)` does: ~250 ms CPU -> ~60 ms; make bench-query ARGS=--compare), 25% smaller.
LATENCY_CODEC = "CODEC(T64, LZ4)"
LATENCY_COLUMN = f"latency_us UInt64 MATERIALIZED {LATENCY_MATERIALIZED} {LATENCY_CODEC}"


def _latency_from_annotation(client: Client) -> None:
    """Migration 4 on a table made before it: new rows get the new latency_us on insert, stored rows are
    rewritten by a background mutation. A table migration 1 made with it already is left alone (no mutation)."""
    rows = client.query(
        "SELECT default_expression FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'audit_events' AND name = 'latency_us'"
    ).result_rows
    if rows and "apiserver.latency.k8s.io" in rows[0][0]:
        return
    verb = "MODIFY" if rows else "ADD"
    client.command(f"ALTER TABLE audit_events {verb} COLUMN {LATENCY_COLUMN}")
    if client.query("SELECT count() FROM audit_events").result_rows[0][0]:
        client.command("ALTER TABLE audit_events MATERIALIZE COLUMN latency_us")


def _latency_codec(client: Client) -> None:
    """Migration 8: latency_us stored with LATENCY_CODEC. A codec change alone is metadata (new parts, merges); rows
    already stored are rewritten by a background mutation of that one column (the same values: the column is
    recomputed from the row). Migration 1 creates the column without it (so that ``migrate(upto=7)`` is the schema
    before this one) and this is then metadata only; a column migration 4 added has it already and is left alone."""
    rows = client.query(
        "SELECT compression_codec FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'audit_events' AND name = 'latency_us'"
    ).result_rows
    if rows and "T64" in rows[0][0]:
        return
    client.command(f"ALTER TABLE audit_events MODIFY COLUMN {LATENCY_COLUMN}")
    if client.query("SELECT count() FROM audit_events").result_rows[0][0]:
        client.command("ALTER TABLE audit_events MATERIALIZE COLUMN latency_us")


def _migrations(ttl_days: int) -> list[tuple[int, str, list[Any]]]:
    ttl = f"TTL toDateTime(request_received_ts) + INTERVAL {ttl_days} DAY" if ttl_days > 0 else ""
    return [
        (
            1,
            "events, stats, alerts, rollups",
            [
                f"""CREATE TABLE IF NOT EXISTS audit_events ({EVENT_COLUMNS},
    latency_us UInt64 MATERIALIZED {LATENCY_MATERIALIZED},
    INDEX idx_auditid auditid TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_username username TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_name objectref_name TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_source source_id TYPE bloom_filter(0.001) GRANULARITY 1
) ENGINE = MergeTree
PARTITION BY toYYYYMM(request_received_ts)
ORDER BY (cluster, toStartOfHour(request_received_ts), verb, objectref_resource, request_received_ts)
{ttl}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000""",
                """CREATE TABLE IF NOT EXISTS verb_stats (
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
SETTINGS non_replicated_deduplication_window = 10000""",
                """CREATE TABLE IF NOT EXISTS status_stats (
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
SETTINGS non_replicated_deduplication_window = 10000""",
                """CREATE TABLE IF NOT EXISTS alerts (
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
SETTINGS non_replicated_deduplication_window = 1000""",
                """CREATE TABLE IF NOT EXISTS events_1m (
    cluster LowCardinality(String),
    minute DateTime('UTC'),
    verb LowCardinality(String),
    objectref_resource LowCardinality(String),
    responsestatus_code UInt16,
    events UInt64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (cluster, minute, verb, objectref_resource, responsestatus_code)
SETTINGS non_replicated_deduplication_window = 10000""",
                """CREATE MATERIALIZED VIEW IF NOT EXISTS events_1m_mv TO events_1m AS
SELECT cluster, toStartOfMinute(request_received_ts) AS minute, verb, objectref_resource,
       responsestatus_code, count() AS events
FROM audit_events
GROUP BY cluster, minute, verb, objectref_resource, responsestatus_code""",
            ],
        ),
        (
            2,
            "audit_events: plain String where LowCardinality only made writes and merges dearer",
            # a no-op on a table migration 1 created with these types; on an older one, a background mutation
            [
                "ALTER TABLE audit_events "
                + ", ".join(f"MODIFY COLUMN {name} {typ}" for name, typ in PLAIN_STRING_COLUMNS.items())
            ],
        ),
        (
            3,
            "audit_events.redacted: the credential fields kaudit replaced by hashes (pipeline/redaction)",
            # a no-op on a table migration 1 created with it; older rows read as [] (nothing was flagged then)
            ["ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS redacted Array(String) AFTER extra"],
        ),
        (
            4,
            "audit_events.latency_us from the apiserver.latency.k8s.io/total annotation (query language: latency)",
            [_latency_from_annotation],
        ),
        (
            5,
            "saved searches and query alerts (pipeline.searches)",
            [SAVED_SEARCHES_DDL],
        ),
        (
            6,
            "audit_events: Kubernetes 1.35+ impersonation_constraint and the Forbidden message's authorization_verb",
            [
                "ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS impersonation_constraint LowCardinality(String) "
                "AFTER source_id, ADD COLUMN IF NOT EXISTS authorization_verb LowCardinality(String) "
                "AFTER impersonation_constraint"
            ],
        ),
        (
            7,
            "volume: audit_events.event_bytes and the hourly volume rollup",
            [
                "ALTER TABLE audit_events "
                + ", ".join(f"ADD COLUMN IF NOT EXISTS {n} {t}" for n, t in VOLUME_EVENT_COLUMNS.items()),
                """CREATE TABLE IF NOT EXISTS volume_1h (
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
SETTINGS non_replicated_deduplication_window = 10000""",
                f"CREATE MATERIALIZED VIEW IF NOT EXISTS volume_1h_mv TO volume_1h AS {VOLUME_SELECT} GROUP BY ALL",
                # events stored before this migration: counted once, sizes unknown (0 bytes)
                f"INSERT INTO volume_1h {VOLUME_SELECT} WHERE (SELECT count() FROM volume_1h) = 0 GROUP BY ALL",
            ],
        ),
        (
            8,
            "audit_events.latency_us with CODEC(T64, LZ4): percentile/avg/sd of latency read it 4x cheaper",
            [_latency_codec],
        ),
    ]


def migrate(client: Client, s: Settings | None = None, upto: int | None = None) -> list[str]:
    """Apply pending migrations; return their names. Safe to call from every writer on start. ``upto``: only the
    versions up to it (the schema an older kaudit made: migration tests, ``make bench-query --compare``)."""
    s = s or get_settings()
    client.command(
        "CREATE TABLE IF NOT EXISTS kaudit_migrations (version UInt32, name String, "
        "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query("SELECT version FROM kaudit_migrations").result_rows}
    applied = []
    for version, name, statements in _migrations(s.retention_days):
        if version in done or (upto is not None and version > upto):
            continue
        for stmt in statements:  # SQL, or a function of the client for a migration that must look first
            stmt(client) if callable(stmt) else client.command(stmt)
        client.insert("kaudit_migrations", [[version, name]], column_names=["version", "name"])
        log.info("applied migration %d: %s", version, name)
        applied.append(f"{version}: {name}")
    if s.retention_days > 0:  # TTL can change after the fact: keep it in line with the setting
        client.command(
            f"ALTER TABLE audit_events MODIFY TTL toDateTime(request_received_ts) + INTERVAL {int(s.retention_days)} DAY"
        )
    return applied
