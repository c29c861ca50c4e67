"""The cluster layout (KAUDIT_CLICKHOUSE_CLUSTER): no ClickHouse server runs here, so ClickHouse's own parser (chDB)
reads every generated statement, and chDB executes the layout itself as far as one process can: everything but
ON CLUSTER (needs Keeper), the Replicated engines (Keeper; replaced by their plain kinds with the same arguments)
and reads/inserts through the Distributed tables (they connect to the shards' hosts). The single-node layout is
checked byte for byte against the statements migrations produced before the cluster layout existed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.warehouse import client as client_mod
from pipeline.warehouse.migrations import (
    CLUSTER_WRITE_SETTINGS,
    SHARDING_KEYS,
    Layout,
    _check_layout,
    _migrations,
    migrate,
    migration_statements,
    syntax_error,
)
from pipeline.warehouse.reader import Warehouse
from pipeline.warehouse.sqlguard import READABLE_TABLES, ReadOnlyError, reader_user_sql
from tests.conftest import migrated_database

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests/data/migrations/single_node.sql"
CLUSTER = "kaudit"  # infra/clickhouse/cluster.xml's cluster
CLUSTER_SETTINGS = Settings(clickhouse_cluster=CLUSTER, retention_days=30, clickhouse_dsn="http://ch1:8123/kaudit")


def _dump(layout: Layout | None = None) -> str:
    """The migrations as the golden file spells them (made from the code before the cluster layout existed)."""
    layout = layout or Layout()
    out = []
    for ttl in (0, 30):
        out.append(f"-- retention_days={ttl}")
        for v, name, stmts in _migrations(ttl, layout):
            out.append(f"-- {v}: {name}")
            for s in stmts:
                out.append(f"<callable {s.__name__}>" if callable(s) else s)
                out.append(";")
    return "\n".join(out) + "\n"


def _sql(stmts: list[str]) -> list[str]:
    return [s for s in stmts if not s.startswith("--")]


# --- one node: unchanged -------------------------------------------------------------------------------------------
def test_single_node_statements_are_byte_for_byte_unchanged():
    assert _dump() == GOLDEN.read_text()
    single = migration_statements(Settings(retention_days=30))
    assert single[0] == ("CREATE TABLE IF NOT EXISTS kaudit_migrations (version UInt32, name String, "
                         "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version")  # fmt: skip
    assert single[-1] == "ALTER TABLE audit_events MODIFY TTL toDateTime(request_received_ts) + INTERVAL 30 DAY"
    assert not any("_local" in s or "ON CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in single)


# --- the cluster layout: shape --------------------------------------------------------------------------------------
def test_cluster_layout_shape():
    stmts = _sql(migration_statements(CLUSTER_SETTINGS, "kaudit"))
    ddl = [s for s in stmts if s.startswith(("CREATE", "ALTER"))]
    assert ddl and all(f" ON CLUSTER {CLUSTER} " in s for s in ddl)
    # every statement but the bookkeeping rows is DDL: the volume backfill (a pre-migration-7 database) is gone
    assert {s.split("(")[0].strip() for s in stmts if not s.startswith(("CREATE", "ALTER"))} == {
        "INSERT INTO kaudit_migrations"
    }
    creates = {re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", s)[1]: s for s in ddl if s.startswith("CREATE TABLE")}
    single = {re.match(r"CREATE TABLE IF NOT EXISTS (\w+)", s)[1] for s in migration_statements(Settings())
              if s.startswith("CREATE TABLE")}  # fmt: skip
    # today's names are the Distributed tables (readers and the sink keep their SQL); rows live in *_local
    distributed = {n for n, s in creates.items() if "ENGINE = Distributed(" in s}
    assert distributed == set(SHARDING_KEYS) == single - {"kaudit_migrations"}
    for name in distributed:
        assert f"ENGINE = Distributed('{CLUSTER}', 'kaudit', '{name}_local', {SHARDING_KEYS[name]})" in creates[name]
        local = creates[f"{name}_local"]
        assert re.search(r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/\{database\}/\{table\}', "
                         r"'\{replica\}'", local), local  # fmt: skip
        assert "non_replicated" not in local
    assert set(creates) == distributed | {f"{n}_local" for n in distributed} | {"kaudit_migrations"}
    # one bookkeeping table for the whole cluster: no {shard} in its path, replicas named uniquely cluster-wide
    assert "ReplicatedMergeTree('/clickhouse/tables/all/{database}/kaudit_migrations', '{shard}-{replica}')" in creates[
        "kaudit_migrations"
    ]
    views = [s for s in ddl if s.startswith("CREATE MATERIALIZED VIEW")]
    assert [re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\w+)", v)[1] for v in views] == [
        "events_1m_mv_local", "volume_1h_mv_local"]  # fmt: skip
    for v in views:  # fired by each node's local inserts, into that node's local rollup
        assert re.search(r"TO kaudit\.(events_1m|volume_1h)_local AS", v)
        assert re.findall(r"FROM (\S+)", v) == ["kaudit.audit_events_local"]
    # column changes reach both the local tables and the Distributed one; TTL only the local
    alters = [s for s in ddl if s.startswith("ALTER")]
    assert sum(s.startswith("ALTER TABLE audit_events_local") for s in alters) == sum(
        s.startswith("ALTER TABLE audit_events ON") for s in alters) + 1  # fmt: skip
    assert alters[-1].startswith("ALTER TABLE audit_events_local ON CLUSTER kaudit MODIFY TTL")


def test_layout_refuses_names_that_are_not_identifiers():
    for bad in ("a;b", "x y", "1abc", "k`"):
        with pytest.raises(ValueError):
            Layout(bad)
    with pytest.raises(ValueError):
        Layout(CLUSTER, "db; DROP")
    assert Layout("", "my-db").on == ""  # one node: the database is never spliced in


# --- ClickHouse's parser ----------------------------------------------------------------------------------------------
def test_every_cluster_statement_parses_with_clickhouse(warehouse):
    client, _s, _db = warehouse

    def run(sql: str, params: dict[str, Any]) -> Any:
        return client.query(sql, parameters=params).result_rows

    stmts = _sql(migration_statements(CLUSTER_SETTINGS, "kaudit"))
    stmts += reader_user_sql("kaudit_reader", "00" * 32, "kaudit", {"max_execution_time": 30}, cluster=CLUSTER)
    assert len(stmts) > 40
    errors = {s[:80]: syntax_error(s, run) for s in stmts}
    assert {k: e for k, e in errors.items() if e} == {}
    # the check can fail: a statement ClickHouse does not accept is reported
    assert syntax_error("CREATE TABLE x ON CLUSTER kaudit (a UInt8) ENGINE = ReplicatedMergeTree(", run)
    assert syntax_error("ALTER TABLE audit_events ON CLUSTER MODIFY TTL", run)


def test_reader_user_on_a_cluster_grants_the_local_tables_everywhere():
    stmts = reader_user_sql("rd", "00" * 32, "kaudit", {}, cluster=CLUSTER)
    assert all(" ON CLUSTER `kaudit`" in s for s in stmts)
    granted = {re.search(r"SELECT ON `kaudit`\.`(\w+)`", s)[1] for s in stmts if " SELECT ON " in s}
    assert granted == (set(READABLE_TABLES) - {"events_1m_mv"}) | {f"{t}_local" for t in SHARDING_KEYS if
                                                                  t != "saved_searches"}  # fmt: skip
    # otherwise the single-node statements: the same profile, role, user and grants of the Distributed tables
    single = reader_user_sql("rd", "00" * 32, "kaudit", {})
    assert [s for s in single if "events_1m_mv" not in s] == [
        s.replace(" ON CLUSTER `kaudit`", "") for s in stmts if "_local`" not in s
    ]


# --- chDB executes the layout -------------------------------------------------------------------------------------
_EXEC = textwrap.dedent(
    """
    import json, re, sys, chdb
    from pipeline.config import Settings
    from pipeline.warehouse.migrations import Layout, _check_layout, _sql_string, migrate
    cfg, path = sys.argv[1], sys.argv[2]
    c = chdb.connect(f"file:{path}?config-file={cfg}")
    cur = c.cursor()
    out = {}
    def q(sql):
        cur.execute(sql)
        return [list(r) for r in cur.fetchall()]
    q("CREATE DATABASE IF NOT EXISTS kaudit")
    q("USE kaudit")
    def local(st):  # what one process can run: no ON CLUSTER (Keeper), Replicated -> the plain engine
        st = st.replace(" ON CLUSTER kaudit", "")
        return re.sub(r"Replicated(\\w*)MergeTree\\('[^']*', '[^']*'(?:, )?", r"\\1MergeTree(", st)
    class Result:
        def __init__(self, rows):
            self.result_rows = rows
    class Client:
        \"\"\"The part of clickhouse-connect's client migrate() uses, over this chDB: queries as they are (the
        server-side parse of every statement included), DDL through local().\"\"\"
        def __init__(self):
            self.ran = []
        def query(self, sql, parameters=None):
            for k, v in (parameters or {}).items():
                sql = sql.replace("{%s:String}" % k, _sql_string(v))
            return Result([tuple(r) for r in q(sql)])
        def command(self, sql):
            self.ran.append(sql)
            q(local(sql))
        def insert(self, table, rows, column_names):
            vals = ", ".join("(" + ", ".join(str(v) if isinstance(v, int) else _sql_string(v) for v in r) + ")"
                             for r in rows)
            q(f"INSERT INTO {table} ({', '.join(column_names)}) VALUES {vals}")
    s = Settings(clickhouse_dsn="http://ch1:8123/kaudit", clickhouse_cluster="kaudit", retention_days=30)
    client = Client()
    out["applied"] = migrate(client, s)
    out["ran"] = client.ran
    out["again"] = migrate(client, s)  # a re-run: nothing pending, only IF NOT EXISTS bookkeeping and the TTL
    out["versions"] = q("SELECT version FROM kaudit_migrations ORDER BY version")
    try:
        _check_layout(client, Layout())
        out["single_on_cluster"] = "accepted"
    except RuntimeError as e:
        out["single_on_cluster"] = str(e)
    out["tables"] = q("SELECT name, engine, engine_full, dependencies_table FROM system.tables "
                      "WHERE database = 'kaudit' ORDER BY name")
    out["columns"] = q("SELECT table, name, type, default_kind, default_expression FROM system.columns "
                       "WHERE database = 'kaudit' ORDER BY table, position")
    out["macros"] = q("SELECT macro, substitution FROM system.macros ORDER BY macro")
    out["clusters"] = q("SELECT cluster, shard_num, replica_num, host_name, port FROM system.clusters "
                        "ORDER BY shard_num")
    # what a shard does with the rows a Distributed insert hands it: the local table fires both views
    q("INSERT INTO audit_events_local (cluster, auditid, stage, verb, request_uri, request_received_ts, stage_ts, "
      "source_id, event_bytes, annotations) VALUES "
      "('c1', 'a1', 'ResponseComplete', 'get', '/api/v1/pods', '2026-12-01 10:00:01', '2026-12-01 10:00:01.5', "
      "'0:1', 100, {'apiserver.latency.k8s.io/total': '2ms'}), "
      "('c1', 'a2', 'ResponseComplete', 'list', '/api/v1/pods', '2026-12-01 10:00:02', '2026-12-01 10:00:02', "
      "'0:2', 50, {})")
    out["events_1m"] = q("SELECT sum(events) FROM events_1m_local")
    out["volume"] = q("SELECT sum(events), sum(bytes) FROM volume_1h_local")
    out["latency"] = q("SELECT auditid, latency_us FROM audit_events_local ORDER BY auditid")
    try:  # the Distributed name reaches for the cluster's hosts
        q("SELECT count() FROM audit_events SETTINGS connections_with_failover_max_tries = 1")
        out["distributed_read"] = "ran"
    except Exception as e:
        out["distributed_read"] = str(e)[:300]
    print(json.dumps(out, default=str))
    """
)


def _chdb_config(tmp: Path) -> Path:
    """remote_servers and ch1's macros from infra/clickhouse (not the Keeper section: nothing to connect to)."""
    root = ET.Element("clickhouse")
    root.append(ET.parse(REPO / "infra/clickhouse/cluster.xml").getroot().find("remote_servers"))
    root.append(ET.parse(REPO / "infra/clickhouse/macros-ch1.xml").getroot().find("macros"))
    cfg = tmp / "config.xml"
    ET.ElementTree(root).write(cfg)
    return cfg


def test_chdb_executes_the_cluster_layout(tmp_path: Path):
    """migrate() itself on a cluster layout, over chDB configured with infra/clickhouse's cluster and ch1's macros."""
    proc = subprocess.run(
        [sys.executable, "-c", _EXEC, str(_chdb_config(tmp_path)), str(tmp_path / "db")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [a.split(":")[0] for a in out["applied"]] == [str(v) for v, _, _ in _migrations(0)]
    assert out["again"] == [] and out["versions"] == [[v] for v, _, _ in _migrations(0)]
    ddl = [s for s in out["ran"] if s.startswith(("CREATE", "ALTER"))]
    assert len(ddl) > 20 and all(" ON CLUSTER kaudit " in s for s in ddl)  # what a server would have been sent
    assert "holds kaudit's cluster layout" in out["single_on_cluster"]  # the other layout is refused
    assert out["macros"] == [["replica", "ch1"], ["shard", "01"]]
    assert [r[:4] for r in out["clusters"]] == [[CLUSTER, 1, 1, "ch1"], [CLUSTER, 2, 1, "ch2"]]
    tables = {r[0]: r for r in out["tables"]}
    for name, key in SHARDING_KEYS.items():
        assert tables[name][1] == "Distributed"
        assert f"Distributed('{CLUSTER}', 'kaudit', '{name}_local', {key})" in tables[name][2]
        assert tables[f"{name}_local"][1].endswith("MergeTree")
        cols = lambda t: [c[1:] for c in out["columns"] if c[0] == t]  # noqa: E731
        assert cols(name) == cols(f"{name}_local"), name  # the ALTERs kept both in step (event_bytes, ...)
    assert "event_bytes" in {c[1] for c in out["columns"] if c[0] == "audit_events"}
    assert sorted(eval(tables["audit_events_local"][3])) == ["events_1m_mv_local", "volume_1h_mv_local"]
    assert "TTL toDateTime(request_received_ts) + toIntervalDay(30)" in tables["audit_events_local"][2]
    assert out["events_1m"] == [[2]] and out["volume"] == [[2, 150]]
    assert out["latency"] == [["a1", 2000], ["a2", 0]]
    assert "ch1" in out["distributed_read"] or "ch2" in out["distributed_read"], out["distributed_read"]


# --- the migrate command and the guards --------------------------------------------------------------------------
def test_migrate_refuses_a_mismatched_or_embedded_cluster_layout(warehouse):
    client, s, db = warehouse
    with pytest.raises(RuntimeError, match="needs a ClickHouse server DSN"):
        migrate(client, s.model_copy(update={"clickhouse_cluster": CLUSTER}))
    with pytest.raises(RuntimeError, match="single-node kaudit tables"):
        _check_layout(client, Layout(CLUSTER, db))
    _check_layout(client, Layout())  # the layout it has: fine


def _kaudit(*args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    import os

    e = {k: v for k, v in os.environ.items() if not k.startswith("KAUDIT_")} | {"KAUDIT_VAR": str(tmp), **env}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=e)  # fmt: skip


def test_migrate_print_shows_the_cluster_statements(tmp_path: Path):
    p = _kaudit("migrate", "--print", "--clickhouse-cluster", CLUSTER, tmp=tmp_path,
                KAUDIT_CLICKHOUSE_DSN="http://ch1:8123/kaudit", KAUDIT_RETENTION_DAYS="30")  # fmt: skip
    assert p.returncode == 0, p.stderr
    expected = [s if s.startswith("--") else s + ";" for s in migration_statements(CLUSTER_SETTINGS, "kaudit")]
    assert p.stdout == "\n".join(expected) + "\n"
    single = _kaudit("migrate", "--print", tmp=tmp_path)
    assert single.returncode == 0 and "ON CLUSTER" not in single.stdout
    assert single.stdout.startswith("CREATE TABLE IF NOT EXISTS kaudit_migrations (version UInt32")
    bad = _kaudit("migrate", "--print", "--clickhouse-cluster", "a;b", tmp=tmp_path)
    assert bad.returncode == 2 and "plain identifier" in bad.stderr
    embedded = _kaudit("migrate", tmp=tmp_path, KAUDIT_CLICKHOUSE_CLUSTER=CLUSTER)
    assert embedded.returncode == 2 and "needs a ClickHouse server DSN" in embedded.stderr
    assert not (tmp_path / "chdb").exists()  # refused before opening anything


def test_the_guard_refuses_the_local_tables(chdb_session_path: Path):
    with migrated_database(chdb_session_path, "cl") as (_client, s, db):
        wh = Warehouse(s, max_workers=1, database=db)
        try:
            for table in ("audit_events_local", "events_1m_mv_local", "volume_1h_local", f"{db}.alerts_local"):
                with pytest.raises(ReadOnlyError) as exc:
                    wh.sql(f"SELECT count() FROM {table}")
                assert exc.value.offending == table.split(".")[-1] or table in str(exc.value), str(exc.value)
            assert wh.sql("SELECT count() FROM audit_events")[1] == [[0]]  # the check can pass
        finally:
            wh.close()


def test_cluster_writers_insert_synchronously_readers_untouched(monkeypatch, tmp_path: Path):
    """Unit test (no server): the session settings each kind of client is opened with."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(client_mod.clickhouse_connect, "get_client", lambda **kw: seen.append(kw["settings"]))
    server = Settings(clickhouse_dsn="http://ch1:8123/kaudit", clickhouse_cluster=CLUSTER)
    client_mod.open_client(server)
    client_mod.open_client(server, reader=True)
    client_mod.open_client(Settings(clickhouse_dsn="http://ch1:8123/kaudit"))
    assert seen[0] == {**CLUSTER_WRITE_SETTINGS, **client_mod.SESSION_SETTINGS}
    assert seen[0]["distributed_foreground_insert"] == 1 and seen[0]["insert_quorum"] == "auto"
    assert seen[1] == {} and seen[2] == client_mod.SESSION_SETTINGS


def test_the_sinks_tables_are_the_distributed_ones():
    """The sink's dedup check and inserts name self.table: on a cluster those must be Distributed (all shards)."""
    from pipeline.sinks.tables import AlertsWriter, EventsWriter, StatsWriter

    names = {EventsWriter.table, AlertsWriter.table}
    names |= {StatsWriter(None, t, k, False, Path("/nonexistent")).table  # type: ignore[arg-type]
              for t, k in (("verb_stats", "verb"), ("status_stats", "code"))}  # fmt: skip
    assert names <= set(SHARDING_KEYS)
