"""Schema migrations: a fresh warehouse gets the current schema; one made by an older kaudit is brought to it
without losing rows; running them again changes nothing."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.warehouse.client import open_client
from pipeline.warehouse.migrations import (
    EVENT_COLUMNS,
    LATENCY_ANNOTATION,
    LATENCY_COLUMN,
    PLAIN_STRING_COLUMNS,
    _migrations,
    event_columns_before_v2,
    migrate,
)


def column_types(client, table: str = "audit_events") -> dict[str, str]:  # noqa: ANN001
    rows = client.query(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
        parameters={"t": table},
    ).result_rows
    return dict(rows)


def fresh_database(chdb_path: Path):  # noqa: ANN201
    admin = open_client(dsn=f"chdb://{chdb_path}")
    db = f"m_{uuid.uuid4().hex[:10]}"
    admin.command(f"CREATE DATABASE {db}")
    return admin, db, open_client(Settings(clickhouse_dsn=f"chdb://{chdb_path}"), database=db)


def test_fresh_warehouse_has_the_current_types_and_no_mutation(chdb_session_path: Path):
    admin, db, client = fresh_database(chdb_session_path)
    try:
        applied = migrate(client, Settings())
        assert [a.split(":")[0] for a in applied] == [str(v) for v, _, _ in _migrations(0)]
        types = column_types(client)
        for name, typ in PLAIN_STRING_COLUMNS.items():
            assert types[name] == typ
        assert types["username"] == types["verb"] == "LowCardinality(String)"
        assert client.query("SELECT count() FROM system.mutations WHERE database = currentDatabase()").result_rows == [(0,)]
        assert migrate(client, Settings()) == []
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")


def test_version_1_warehouse_is_migrated_in_place_and_keeps_its_rows(chdb_session_path: Path):
    admin, db, client = fresh_database(chdb_session_path)
    try:
        # what kaudit's migration 1 created before migration 2 existed
        old = event_columns_before_v2()
        later = event_columns_before_v2(later_columns=True)  # the same types with the columns added since
        assert later.count("LowCardinality") - EVENT_COLUMNS.count("LowCardinality") == len(PLAIN_STRING_COLUMNS)
        client.command(f"CREATE TABLE audit_events ({old}) ENGINE = MergeTree ORDER BY (cluster, request_received_ts)")
        client.command(
            "CREATE TABLE kaudit_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) "
            "ENGINE = MergeTree ORDER BY version"
        )
        client.command("INSERT INTO kaudit_migrations (version, name) VALUES (1, 'events, stats, alerts, rollups')")
        before = column_types(client)
        assert before["usergroups"] == "Array(LowCardinality(String))" and before["level"] == "LowCardinality(String)"
        client.command(
            "INSERT INTO audit_events (cluster, auditid, level, usergroups, annotations, decision, request_received_ts) "
            "VALUES ('c', 'a1', 'Metadata', ['system:masters', 'x'], {'k': 'v'}, 'allow', now64(6))"
        )
        assert "redacted" not in before
        assert [a.split(":")[0] for a in migrate(client, Settings())] == [str(v) for v, _, _ in _migrations(0) if v >= 2]
        after = column_types(client)
        assert {n: after[n] for n in PLAIN_STRING_COLUMNS} == PLAIN_STRING_COLUMNS
        assert after["redacted"] == "Array(String)"  # migration 3; the old row reads as nothing redacted
        assert client.query(
            "SELECT auditid, level, usergroups, annotations, decision, redacted FROM audit_events"
        ).result_rows == [("a1", "Metadata", ["system:masters", "x"], {"k": "v"}, "allow", [])]
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")


def test_migration_6_adds_the_1_35_columns_to_an_older_table(chdb_session_path: Path):
    admin, db, client = fresh_database(chdb_session_path)
    try:
        older = "\n".join(ln for ln in EVENT_COLUMNS.rstrip().splitlines()
                          if not ln.strip().startswith(("impersonation_constraint", "authorization_verb"))).rstrip(",")  # fmt: skip
        client.command(f"CREATE TABLE audit_events ({older}) ENGINE = MergeTree ORDER BY (cluster, request_received_ts)")
        client.command(
            "CREATE TABLE kaudit_migrations (version UInt32, name String, applied_at DateTime DEFAULT now()) "
            "ENGINE = MergeTree ORDER BY version"
        )
        client.command("INSERT INTO kaudit_migrations (version, name) VALUES (1, 'x'), (2, 'y'), (3, 'z')")
        client.command("INSERT INTO audit_events (cluster, auditid, request_received_ts) VALUES ('c', 'a1', now64(6))")
        assert "authorization_verb" not in column_types(client)
        assert [a.split(":")[0] for a in migrate(client, Settings())] == ["4", "5", "6", "7", "8", "9", "10"]
        types = column_types(client)
        assert types["impersonation_constraint"] == types["authorization_verb"] == "LowCardinality(String)"
        assert client.query("SELECT auditid, impersonation_constraint, authorization_verb FROM audit_events").result_rows == [("a1", "", "")]
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")


def latency_codec(client) -> str:  # noqa: ANN001
    return column_codec(client, "latency_us")


def test_migration_8_stores_latency_with_t64_and_keeps_every_value(chdb_session_path: Path):
    """A table of migrations 1-7 with rows: migration 8 changes latency_us's codec and rewrites the stored rows in
    the background (a mutation of that column), and every latency reads the same before and after, 64-bit ones
    included (a 2-hour watch is more than 2^32 µs)."""
    admin, db, client = fresh_database(chdb_session_path)
    try:
        migrate(client, Settings(), upto=7)
        assert "T64" not in latency_codec(client)
        rows = [["c", f"a{i}", {LATENCY_ANNOTATION: d} if d else {}, f"0:{i}"]
                for i, d in enumerate(["", "1.5ms", "2h0m0.25s", "800ns", "", "71m35s"])]  # fmt: skip
        client.insert("audit_events", rows, column_names=["cluster", "auditid", "annotations", "source_id"])
        client.command(
            "INSERT INTO audit_events (cluster, auditid, request_received_ts, stage_ts, source_id) "
            "SELECT 'c', toString(number), toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMicrosecond(number), "
            "toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalMicrosecond(number * 3 + intHash32(number) % 5000), "
            "concat('1:', toString(number)) FROM numbers(100000)"
        )
        read = "SELECT auditid, latency_us FROM audit_events ORDER BY auditid"
        before = client.query(read).result_rows
        assert dict(before)["a2"] == 7_200_250_000 > 2**32 and dict(before)["a1"] == 1500 and dict(before)["a3"] == 1
        assert [a.split(":")[0] for a in migrate(client, Settings(), upto=8)] == ["8"]
        assert latency_codec(client) == "CODEC(T64, LZ4)"
        for _ in range(600):  # the rewrite of stored rows is a background mutation
            if client.query("SELECT count() FROM system.mutations WHERE database = currentDatabase() "
                            "AND NOT is_done").result_rows == [(0,)]:  # fmt: skip
                break
            time.sleep(0.1)
        done = client.query("SELECT groupArray(command) FROM system.mutations WHERE database = currentDatabase() "
                            "AND is_done").result_rows[0][0]  # fmt: skip
        assert done == ["(MATERIALIZE COLUMN latency_us)"]
        assert client.query(read).result_rows == before
        assert migrate(client, Settings(), upto=8) == []
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")


def column_codec(client, column: str) -> str:  # noqa: ANN001
    return client.query(
        "SELECT compression_codec FROM system.columns WHERE database = currentDatabase() AND table = 'audit_events' "
        "AND name = {c:String}", parameters={"c": column},
    ).result_rows[0][0]


def test_migration_9_stores_request_time_with_t64_and_every_part_reads_the_same(chdb_session_path: Path):
    """A table of migrations 1-8 with rows: migration 9 changes request_received_ts's codec (metadata: the parts
    stored before keep theirs until merged), rows of both codecs read the same timestamps, to the microsecond and
    before 1970, the sort order and time filters still work, and a merge into one part rewrites the old rows."""
    admin, db, client = fresh_database(chdb_session_path)
    try:
        migrate(client, Settings(), upto=8)
        assert column_codec(client, "request_received_ts") == "CODEC(Delta(8), ZSTD(1))"
        fill = ("INSERT INTO audit_events (cluster, auditid, request_received_ts, source_id) SELECT 'c', "
                "concat('{p}', toString(number)), toDateTime64('{t}', 6, 'UTC') + toIntervalMicrosecond(number * 79190011 "
                "+ intHash32(number) % 1000), concat('{p}:', toString(number)) FROM numbers(50000)")  # fmt: skip
        client.command(fill.format(p="old", t="2026-03-01 00:00:00"))
        client.insert("audit_events", [["c", "edge-1969", dt.datetime(1969, 7, 20, 20, 17, 40, 123456, tzinfo=dt.UTC), "e:0"],
                                       ["c", "edge-2105", dt.datetime(2105, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC), "e:1"]],
                      column_names=["cluster", "auditid", "request_received_ts", "source_id"])  # fmt: skip
        read = "SELECT auditid, toString(request_received_ts) FROM audit_events ORDER BY auditid"
        before = client.query(read).result_rows
        assert [a.split(":")[0] for a in migrate(client, Settings())] == ["9", "10"]
        assert column_codec(client, "request_received_ts") == "CODEC(T64, LZ4)"
        assert client.query("SELECT count() FROM system.mutations WHERE database = currentDatabase()").result_rows == [(0,)]
        client.command(fill.format(p="new", t="2026-03-01 00:00:00"))
        both = client.query(read).result_rows
        assert [r for r in both if not r[0].startswith("new")] == before
        assert dict(both)["edge-1969"] == "1969-07-20 20:17:40.123456" and dict(both)["edge-2105"] == "2105-01-01 00:00:00.000001"
        assert [r[1] for r in both if r[0].startswith("new")] == [r[1] for r in before if r[0].startswith("old")]
        window = ("SELECT count(), min(request_received_ts), max(request_received_ts) FROM audit_events WHERE "
                  "request_received_ts >= '2026-03-02 01:00:00' AND request_received_ts < '2026-03-02 01:30:00'")  # fmt: skip
        counted = client.query(window).result_rows[0]
        expected = sum(1 for a, t in before if a.startswith("old") and "2026-03-02 01:00:00" <= t < "2026-03-02 01:30:00")
        assert counted[0] == 2 * expected > 0
        client.command("OPTIMIZE TABLE audit_events FINAL")
        assert client.query(read).result_rows == both and client.query(window).result_rows[0] == counted
        assert migrate(client, Settings()) == []
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")


def test_migration_10_caps_the_latency_annotation_so_no_insert_fails(chdb_session_path: Path):
    """A table of migrations 1-9 refuses a row whose apiserver.latency.k8s.io/total holds a 400-digit duration
    (+inf, and toUInt64 of it is Code 70: the sink would retry that batch forever); after migration 10 (metadata
    only, no mutation) the same insert lands and real durations read as before."""
    admin, db, client = fresh_database(chdb_session_path)
    try:
        migrate(client, Settings(), upto=9)
        uncapped = LATENCY_COLUMN.replace("least(toFloat64OrZero(extract(p, '^[0-9.]+')), 1e12)",
                                          "toFloat64OrZero(extract(p, '^[0-9.]+'))")  # as migrations 4 and 8 left it
        assert uncapped != LATENCY_COLUMN
        client.command(f"ALTER TABLE audit_events MODIFY COLUMN {uncapped}")
        row = [["c", "huge", {"apiserver.latency.k8s.io/total": "9" * 400 + "h"}, "s:0"]]
        cols = ["cluster", "auditid", "annotations", "source_id"]
        with pytest.raises(Exception, match="Code: 70"):
            client.insert("audit_events", row, column_names=cols)
        client.insert("audit_events", [["c", "real", {"apiserver.latency.k8s.io/total": "2m3.5s"}, "s:1"]], column_names=cols)
        assert [a.split(":")[0] for a in migrate(client, Settings())] == ["10"]
        assert client.query("SELECT count() FROM system.mutations WHERE database = currentDatabase()").result_rows == [(0,)]
        client.insert("audit_events", row, column_names=cols)
        got = dict(client.query("SELECT auditid, latency_us FROM audit_events").result_rows)
        assert got["real"] == 123_500_000 and got["huge"] > 10**18
        assert column_codec(client, "latency_us") == "CODEC(T64, LZ4)"
        assert migrate(client, Settings()) == []
    finally:
        admin.command(f"DROP DATABASE IF EXISTS {db}")
