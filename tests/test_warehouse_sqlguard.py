"""The read side's guard on the real engine (chDB): ClickHouse's parser decides what a statement touches.

Shows first that the attacks are real (file() and INTO OUTFILE do read and write files on this engine when the
guard is bypassed), then that every spelling of them, and of everything else outside kaudit's tables, is refused;
that analysts' queries still work; that limits stop runaway reads with the limit named (CLI, API); and that
scope_to_clusters confines statements to clusters by the AST rewrite and by the engine's table filters alike."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.warehouse.reader import Warehouse
from pipeline.warehouse.sqlguard import (
    LimitExceeded,
    ReadOnlyError,
    function_allowed,
    reader_user_sql,
    scope_to_clusters,
)
from tests.conftest import migrated_database

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
CLUSTERS = {"alpha": 5, "beta": 3, "gamma": 2}  # events per cluster
SECRET = "kaudit-test-secret-7f3a9"


def _events() -> list[list[Any]]:
    rows = []
    for cluster, n in CLUSTERS.items():
        for i in range(n):
            ts = T0 + dt.timedelta(minutes=i)
            rows.append([cluster, f"{cluster}-{i}", "ResponseComplete", ["get", "list", "delete"][i % 3],
                         f"user{i % 2}", ["system:authenticated", f"g{i}"], {"k": str(i)}, ts, ts,
                         200 if i % 2 else 403, f"0:{cluster}{i}"])  # fmt: skip
    return rows


EVENT_COLS = ["cluster", "auditid", "stage", "verb", "username", "usergroups", "annotations", "request_received_ts",
              "stage_ts", "responsestatus_code", "source_id"]  # fmt: skip


@pytest.fixture(scope="module")
def db(chdb_session_path: Path):
    """A migrated database with events of three clusters and one alert per cluster: (settings, database name)."""
    with migrated_database(chdb_session_path, "sg") as (client, s, name):
        client.insert("audit_events", _events(), column_names=EVENT_COLS)
        client.insert("alerts", [[f"al-{c}", "r1", "t", "high", c, T0, f"{c}-0"] for c in CLUSTERS],
                      column_names=["alert_id", "rule_id", "title", "severity", "cluster", "ts", "auditid"])  # fmt: skip
        yield s, name


@pytest.fixture(scope="module")
def wh(db):
    s, name = db
    w = Warehouse(s, max_workers=2, database=name)
    yield w
    w.close()


def small_limits(db: tuple[Settings, str], **limits: int) -> Warehouse:
    s, name = db
    return Warehouse(s.model_copy(update={f"query_{k}": v for k, v in limits.items()}), max_workers=1, database=name)


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "tokens.yaml"
    p.write_text(f"cluster-a: {SECRET}\n")
    return p


# --- the attacks are real without the guard ------------------------------------------------------------------------
def test_without_the_guard_file_reads_and_into_outfile_writes(wh, db, secret_file, tmp_path):
    """A client of this very engine without the guard and the read settings reads any file and writes files;
    the guard refuses both, and the per-query readonly=1 alone refuses file() too (INTO OUTFILE it does not)."""
    from pipeline.warehouse.client import open_client

    raw = open_client(db[0], database=db[1])
    assert SECRET in raw.query(f"SELECT * FROM file('{secret_file}', 'LineAsString')").result_rows[0][0]
    out = tmp_path / "written.txt"
    raw.query(f"SELECT 'pwned' INTO OUTFILE '{out}'")
    assert "pwned" in out.read_text(errors="replace")  # written in the client's Native format
    with pytest.raises(Exception, match="readonly"):  # the trusted path (no guard) still has readonly=1
        wh.query(f"SELECT * FROM file('{secret_file}', 'LineAsString')")
    out1 = tmp_path / "written-by-readonly.txt"
    wh.query(f"SELECT 'pwned' INTO OUTFILE '{out1}'")
    assert out1.exists()  # what only the guard stops
    with pytest.raises(ReadOnlyError, match=r"table function file\(\)"):
        wh.sql(f"SELECT * FROM file('{secret_file}', 'LineAsString')")
    out2 = tmp_path / "refused.txt"
    with pytest.raises(ReadOnlyError, match="INTO OUTFILE"):
        wh.sql(f"SELECT 'pwned' INTO OUTFILE '{out2}'")
    assert not out2.exists()


# --- refused: every spelling we could think of -----------------------------------------------------------------------
REFUSED = [
    # table functions reaching the host or the network, in every case and quoting
    ("SELECT * FROM file('{f}', 'LineAsString')", "file"),
    ("select * from FILE('{f}', 'LineAsString')", "FILE"),
    ("SELECT * FROM FiLe('{f}', 'LineAsString')", "FiLe"),
    ("SELECT * FROM `file`('{f}', 'LineAsString')", "file"),
    ('SELECT * FROM "file"(\'{f}\', \'LineAsString\')', "file"),
    ("SELECT * FROM file ( '{f}' , 'LineAsString' )", "file"),
    ("SELECT * FROM/**/file('{f}','LineAsString')", "file"),
    ("SELECT * FROM -- comment\nfile('{f}', 'LineAsString')", "file"),
    ("SELECT file('{f}')", "file"),
    ("SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')", "url"),
    ("SELECT * FROM urlCluster('default', 'http://127.0.0.1:1/', 'LineAsString')", "urlCluster"),
    ("SELECT * FROM s3('http://127.0.0.1:1/b/k', 'LineAsString')", "s3"),
    ("SELECT * FROM s3Cluster('default', 'http://127.0.0.1:1/b/k')", "s3Cluster"),
    ("SELECT * FROM gcs('http://127.0.0.1:1/b/k', 'LineAsString')", "gcs"),
    ("SELECT * FROM azureBlobStorage('DefaultEndpointsProtocol=http', 'c', 'b')", "azureBlobStorage"),
    ("SELECT * FROM hdfs('hdfs://127.0.0.1:1/x', 'LineAsString')", "hdfs"),
    ("SELECT * FROM input('x String')", "input"),
    ("SELECT * FROM executable('cat /etc/passwd', 'LineAsString', 'x String')", "executable"),
    ("SELECT * FROM remote('127.0.0.1:1', system.one)", "remote"),
    ("SELECT * FROM remoteSecure('127.0.0.1:1', system.one)", "remoteSecure"),
    ("SELECT * FROM cluster('default', system.one)", "cluster"),
    ("SELECT * FROM clusterAllReplicas('default', system.one)", "clusterAllReplicas"),
    ("SELECT * FROM jdbc('jdbc:x', 'y')", "jdbc"),
    ("SELECT * FROM odbc('DSN=x', 'y')", "odbc"),
    ("SELECT * FROM mysql('127.0.0.1:1', 'db', 't', 'u', 'p')", "mysql"),
    ("SELECT * FROM postgresql('127.0.0.1:1', 'db', 't', 'u', 'p')", "postgresql"),
    ("SELECT * FROM sqlite('{f}', 't')", "sqlite"),
    ("SELECT * FROM mongodb('127.0.0.1:1', 'db', 'c', 'u', 'p', 'x String')", "mongodb"),
    ("SELECT * FROM redis('127.0.0.1:1', 'k', 'k String')", "redis"),
    ("SELECT * FROM deltaLake('http://127.0.0.1:1/x')", "deltaLake"),
    ("SELECT * FROM iceberg('http://127.0.0.1:1/x')", "iceberg"),
    ("SELECT * FROM icebergS3('http://127.0.0.1:1/x')", "icebergS3"),
    ("SELECT * FROM hudi('http://127.0.0.1:1/x')", "hudi"),
    ("SELECT * FROM filesystem('/')", "filesystem"),
    ("SELECT * FROM python('x')", "python"),
    ("SELECT * FROM numbers(300000000000)", "numbers"),
    ("SELECT sum(number) FROM numbers_mt(300000000000)", "numbers_mt"),
    ("SELECT * FROM generateRandom('a String')", "generateRandom"),
    ("SELECT * FROM zeros(10)", "zeros"),
    ("SELECT * FROM values('x UInt8', 1)", "values"),
    ("SELECT * FROM format(CSV, 'x')", "format"),
    ("SELECT * FROM null('x UInt8')", "null"),
    ("SELECT * FROM dictionary('d')", "dictionary"),
    ("SELECT * FROM merge('{db}', '^audit')", "merge"),
    ("SELECT * FROM merge(currentDatabase(), '.*')", "merge"),
    ("SELECT * FROM view(SELECT * FROM file('{f}', 'LineAsString'))", "view"),
    ("SELECT * FROM view(SELECT 1)", "view"),
    ("SELECT * FROM loop(audit_events)", "loop"),
    ("SELECT * FROM timeSeriesData(audit_events)", "timeSeriesData"),
    # table functions hidden in joins, subqueries, CTEs, unions, IN
    ("SELECT * FROM audit_events AS a JOIN file('{f}', 'LineAsString') AS f ON 1", "file"),
    ("SELECT * FROM audit_events WHERE auditid IN (SELECT * FROM file('{f}', 'LineAsString'))", "file"),
    ("SELECT (SELECT any(line) FROM file('{f}', 'LineAsString', 'line String'))", "file"),
    ("SELECT * FROM (SELECT * FROM (SELECT * FROM file('{f}', 'LineAsString')))", "file"),
    ("WITH t AS (SELECT * FROM file('{f}', 'LineAsString')) SELECT * FROM t", "file"),
    ("WITH (SELECT any(line) FROM file('{f}', 'LineAsString', 'line String')) AS s SELECT s", "file"),
    ("SELECT verb FROM audit_events UNION ALL SELECT * FROM file('{f}', 'LineAsString')", "file"),
    ("SELECT 1 INTERSECT SELECT * FROM file('{f}', 'LineAsString')", "file"),
    ("SELECT * FROM audit_events WHERE verb IN numbers(3)", "numbers"),
    ("SELECT arrayMap(x -> file('{f}'), [1])", "file"),
    ("SELECT * APPLY(file) FROM (SELECT '{f}' AS p)", "file"),
    ("SELECT * APPLY(x -> file(x)) FROM (SELECT '{f}' AS p)", "file"),
    # other tables: system, information_schema, other databases, dictionaries, quoting and case
    ("SELECT * FROM system.users", "system.users"),
    ("SELECT * FROM system.tables", "system.tables"),
    ("SELECT * FROM `system`.`tables`", "system.tables"),
    ('SELECT * FROM "system"."settings"', "system.settings"),
    ("SELECT * FROM SYSTEM.TABLES", "SYSTEM.TABLES"),
    ("SELECT * FROM system.one", "system.one"),
    ("SELECT * FROM system.numbers LIMIT 10", "system.numbers"),
    ("SELECT * FROM system.query_log", "system.query_log"),
    ("SELECT * FROM system.processes", "system.processes"),
    ("SELECT * FROM system.dictionaries", "system.dictionaries"),
    ("SELECT * FROM information_schema.tables", "information_schema.tables"),
    ("SELECT * FROM INFORMATION_SCHEMA.COLUMNS", "INFORMATION_SCHEMA.COLUMNS"),
    ("SELECT * FROM default.audit_events", "default.audit_events"),
    ("SELECT * FROM other_db.audit_events", "other_db.audit_events"),
    ("SELECT * FROM `{db}.audit_events`", "{db}.audit_events"),
    ("SELECT * FROM AUDIT_EVENTS", "AUDIT_EVENTS"),
    ("SELECT * FROM audit_events AS a JOIN system.users AS u ON 1", "system.users"),
    ("SELECT * FROM audit_events WHERE username IN (SELECT name FROM system.users)", "system.users"),
    ("SELECT * FROM audit_events WHERE username IN system.users", "system.users"),
    ("SELECT * FROM audit_events WHERE username GLOBAL IN system.users", "system.users"),
    ("WITH t AS (SELECT * FROM system.users) SELECT * FROM t", "system.users"),
    ("WITH t AS (SELECT 1) SELECT * FROM t UNION ALL SELECT * FROM t", "t"),  # a CTE is not seen by other branches
    ("SELECT * FROM audit_events UNION ALL SELECT * FROM system.users", "system.users"),
    ("SELECT dictGet('d', 'a', toUInt64(1))", "dictGet"),
    ("SELECT dictGetString('d', 'a', toUInt64(1))", "dictGetString"),
    ("SELECT DICTGET('d', 'a', toUInt64(1))", "DICTGET"),
    ("SELECT dictHas('d', toUInt64(1))", "dictHas"),
    ("SELECT joinGet('j', 'v', 1)", "joinGet"),
    ("SELECT hasColumnInTable('system', 'users', 'name')", "hasColumnInTable"),
    ("SELECT getSetting('max_memory_usage')", "getSetting"),
    ("SELECT currentUser()", "currentUser"),
    ("SELECT hostName()", "hostName"),
    ("SELECT sleep(3)", "sleep"),
    ("SELECT sleepEachRow(1) FROM audit_events", "sleepEachRow"),
    ("SELECT filesystemAvailable()", "filesystemAvailable"),
    ("SELECT catboostEvaluate('{f}', 1)", "catboostEvaluate"),
    ("SELECT getMacro('x')", "getMacro"),
    ("SELECT globalVariable('x')", "globalVariable"),
    ("SELECT addressToSymbol(toUInt64(1))", "addressToSymbol"),
    ("SELECT throwIf(1)", "throwIf"),
    # clauses a reader may not use
    ("SELECT 1 INTO OUTFILE '/tmp/kaudit-sqlguard-out'", "OUT_FILE"),
    ("SELECT 1 INTO OUTFILE '/tmp/kaudit-sqlguard-out' AND STDOUT", "OUT_FILE"),
    ("SELECT 1 INTO OUTFILE '/tmp/kaudit-sqlguard-out' COMPRESSION 'gzip'", "OUT_FILE"),
    ("SELECT 1 FORMAT JSON", "FORMAT_AST"),
    ("SELECT 1 FORMAT TabSeparated", "FORMAT_AST"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT 1 SETTINGS max_execution_time = 0", "SETTINGS"),
    ("SELECT * FROM audit_events SETTINGS additional_table_filters = {{}}", "SETTINGS"),
    ("SELECT * FROM (SELECT 1 SETTINGS max_memory_usage = 0)", "SETTINGS"),
    ("SELECT 1 UNION ALL SELECT 2 SETTINGS max_result_rows = 0", "SETTINGS"),
    # statements other than SELECT, multiple statements, ; tricks
    ("EXPLAIN SELECT 1", "ExplainQuery"),
    ("EXPLAIN AST SELECT * FROM file('{f}')", "ExplainQuery"),
    ("EXPLAIN PIPELINE SELECT 1", "ExplainQuery"),
    ("SHOW TABLES", "ShowTablesQuery"),
    ("SET readonly = 0", "SetQuery"),
    ("INSERT INTO audit_events (cluster) VALUES ('x')", "InsertQuery"),
    ("INSERT INTO FUNCTION file('/tmp/kaudit-sqlguard-out', 'CSV') SELECT 1", "InsertQuery"),
    ("DROP TABLE audit_events", None),
    ("TRUNCATE TABLE audit_events", None),
    ("ALTER TABLE audit_events DELETE WHERE 1", None),
    ("CREATE TABLE x (a UInt8) ENGINE = File(CSV, '/tmp/kaudit-sqlguard-out')", None),
    ("CREATE DICTIONARY d (k UInt64) PRIMARY KEY k SOURCE(FILE(path '{f}' format 'CSV')) LAYOUT(FLAT()) "
     "LIFETIME(0)", None),
    ("ATTACH TABLE x FROM '/tmp' (a UInt8) ENGINE = Memory", None),
    ("SYSTEM RELOAD DICTIONARIES", None),
    ("KILL QUERY WHERE 1", None),
    ("BACKUP TABLE audit_events TO File('/tmp/kaudit-sqlguard-out')", None),
    ("SELECT 1; SELECT * FROM file('{f}')", None),
    ("SELECT 1; DROP TABLE audit_events", None),
    ("SELECT 1;; SELECT 2", None),
    ("SELECT ';'; SELECT 2", None),
    ("SELECT 1 /* ; */ ; SELECT * FROM file('{f}')", None),
    ("DESCRIBE TABLE audit_events", None),
    ("EXISTS TABLE audit_events", None),
    ("USE system", None),
    ("", None),
    (";", None),
    ("-- only a comment", None),
    ("SELECT * FROM ｆｉｌｅ('{f}')", None),  # fullwidth letters: a syntax error, not a bypass
    ("SELECT * FROM file\u200b('{f}')", None),  # a zero-width space
]


@pytest.mark.parametrize(("sql", "offending"), REFUSED, ids=[f"{i:03d}" for i in range(len(REFUSED))])
def test_refused(wh, db, secret_file, sql, offending):
    text = sql.format(f=secret_file, db=db[1])
    with pytest.raises(ReadOnlyError) as err:
        wh.sql(text)
    if offending:
        expected = offending.format(db=db[1])
        assert err.value.offending == expected or expected in str(err.value), (str(err.value), err.value.offending)
    assert SECRET not in str(err.value)


def test_refused_through_the_api_as_json_400(api, secret_file):
    status, body = api.post({"sql": f"SELECT * FROM FILE('{secret_file}', 'LineAsString')"})
    assert status == 400 and body["refused"] == "FILE" and "not allowed" in body["error"]
    assert SECRET not in json.dumps(body)
    status, body = api.post({"sql": "SELECT * FROM system.users"})
    assert (status, body["refused"]) == (400, "system.users")
    status, body = api.post({"sql": "SELECT 1; SELECT 2"})
    assert status == 400 and "Multi-statements" in body["error"]
    status, body = api.post({"sql": 42})
    assert status == 400


def test_function_allow_list_combinators():
    for name in ("sumIf", "countIf", "uniqExactIf", "groupArrayState", "sumMerge", "quantilesTimingIf", "COUNT",
                 "argMaxIf", "avgOrNull", "sumForEach", "countDistinct"):  # fmt: skip
        assert function_allowed(name), name
    for name in ("file", "dictGet", "fileIf", "dictGetIf", "numbers", "sleepIf", "joinGetOrNull"):
        assert not function_allowed(name), name


# --- allowed: what analysts write --------------------------------------------------------------------------------------
def test_allowed_analyst_queries(wh, db):
    total = sum(CLUSTERS.values())
    assert wh.sql("SELECT count() FROM audit_events")[1] == [[total]]
    assert wh.sql(f"SELECT count() FROM {db[1]}.audit_events;")[1] == [[total]]
    assert wh.sql(f'SELECT count() FROM `{db[1]}`."audit_events" AS `e`')[1] == [[total]]
    assert wh.sql("select cluster, COUNT(*) AS n from audit_events group by cluster order by n desc -- top\n")[1] == [
        [c, n] for c, n in CLUSTERS.items()
    ]
    cols, rows = wh.sql(
        "SELECT cluster, verb, count() AS n, row_number() OVER (PARTITION BY cluster ORDER BY count() DESC, verb) AS r"
        " FROM audit_events GROUP BY cluster, verb ORDER BY cluster, r"
    )
    assert cols == ["cluster", "verb", "n", "r"] and rows[0] == ["alpha", "get", 2, 1]
    _, rows = wh.sql("SELECT arrayJoin(usergroups) AS g, count() FROM audit_events GROUP BY g ORDER BY g LIMIT 1")
    assert rows == [["g0", 3]]
    _, rows = wh.sql("SELECT annotations['k'] AS k, countIf(responsestatus_code = 403) FROM audit_events "
                     "WHERE mapContains(annotations, 'k') GROUP BY k ORDER BY k LIMIT 1")  # fmt: skip
    assert rows == [["0", 3]]
    _, rows = wh.sql(
        "WITH denied AS (SELECT cluster, auditid FROM audit_events WHERE responsestatus_code = 403) "
        "SELECT a.cluster, count() FROM denied AS d JOIN alerts AS a ON a.auditid = d.auditid GROUP BY a.cluster "
        "ORDER BY a.cluster"
    )
    assert rows == [[c, 1] for c in sorted(CLUSTERS)]
    _, rows = wh.sql("SELECT count() FROM audit_events WHERE auditid IN (SELECT auditid FROM alerts) "
                     "AND cluster IN (SELECT cluster FROM (SELECT DISTINCT cluster FROM events_1m))")  # fmt: skip
    assert rows == [[3]]  # the MV filled events_1m from the inserts
    _, rows = wh.sql("SELECT c FROM (SELECT cluster AS c FROM alerts UNION ALL SELECT 'x') ORDER BY c")
    assert [r[0] for r in rows] == [*sorted(CLUSTERS), "x"]
    _, rows = wh.sql("SELECT quantile(0.5)(responsestatus_code), uniqExact(username), arrayMap(x -> x * 2, [1, 2]), "
                     "toStartOfHour(max(request_received_ts)), JSONExtractString('{\"a\": \"b\"}', 'a'), "
                     "(SELECT sum(events) FROM events_1m) FROM audit_events AS e, (SELECT 1) AS o")  # fmt: skip
    assert rows[0][1:] == [2, [2, 4], "2026-11-30T12:00:00Z", "b", total]
    _, rows = wh.sql("SELECT version FROM kaudit_migrations ORDER BY version LIMIT 1")
    assert rows == [[1]]


# --- limits ---------------------------------------------------------------------------------------------------------
def test_runaway_numbers_is_refused_and_stopped_by_limits(wh, db):
    with pytest.raises(ReadOnlyError, match="numbers"):
        wh.sql("SELECT sum(number) FROM numbers(300000000000)")
    # the trusted path has no guard but has the limits: stopped before reading (default max_rows_to_read)
    with pytest.raises(LimitExceeded) as err:
        wh.query("SELECT sum(number) FROM numbers(300000000000)")
    assert err.value.limit == "max_rows_to_read"
    # without a row limit, the time limit stops it
    w = small_limits(db, max_rows_to_read=0, max_bytes_to_read=0, max_execution_time=1)
    try:
        with pytest.raises(LimitExceeded) as err:
            w.query("SELECT sum(number) FROM numbers(300000000000)")
        assert err.value.limit == "max_execution_time" and "max_execution_time" in str(err.value)
    finally:
        w.close()


@pytest.mark.parametrize(("limits", "sql", "limit"), [
    ({"max_memory_usage": 64 * 1024**2}, "SELECT length(groupArray(toString(x))) FROM "
     "(SELECT arrayJoin(range(20000000)) AS x)", "max_memory_usage"),
    ({"max_result_rows": 1000}, "SELECT arrayJoin(range(100000))", "max_result_rows"),
    ({"max_result_rows": 1000}, "SELECT * FROM (SELECT arrayJoin(range(100000)))", "max_result_rows"),
    ({"max_result_bytes": 10000}, "SELECT * FROM (SELECT arrayJoin(range(100000)))", "max_result_bytes"),
    ({"max_execution_time": 1}, "SELECT count() FROM (SELECT arrayJoin(range(3000)) AS a) AS x, "
     "(SELECT arrayJoin(range(3000)) AS b) AS y, (SELECT arrayJoin(range(3000)) AS c) AS z "
     "WHERE cityHash64(a, b, c) = 1", "max_execution_time"),
    ({"max_rows_to_read": 3}, "SELECT count() FROM audit_events WHERE verb != 'x'", "max_rows_to_read"),
    ({"max_bytes_to_read": 10}, "SELECT any(auditid) FROM audit_events", "max_bytes_to_read"),
])  # fmt: skip
def test_limits_stop_guarded_statements_with_the_limit_named(db, limits, sql, limit):
    w = small_limits(db, **limits)
    try:
        with pytest.raises(LimitExceeded) as err:
            w.sql(sql)
        assert err.value.limit == limit, str(err.value)
    finally:
        w.close()


def test_limits_also_bound_compiled_query_language(db):
    from pipeline.query import compile_query

    w = small_limits(db, max_rows_to_read=3)
    try:
        with pytest.raises(LimitExceeded) as err:
            w.query_compiled(compile_query('verb="get" groupby cluster'))
        assert err.value.limit == "max_rows_to_read"
    finally:
        w.close()


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, body: Any) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(f"{self.url}/api/sql", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def api(db):
    from pipeline.warehouse.api import make_app
    from tests.test_web_support import ServerThread

    s, name = db
    s = s.model_copy(update={"query_max_result_rows": 1000})
    w = Warehouse(s, max_workers=2, database=name)
    srv = ServerThread(make_app(s, w))
    yield Api(srv.url)
    srv.stop()
    w.close()


def test_api_limits_are_422_with_the_limit_named(api):
    status, body = api.post({"sql": "SELECT arrayJoin(range(100000))"})
    assert status == 422 and body["limit"] == "max_result_rows" and "max_result_rows" in body["error"]
    status, body = api.post({"sql": "SELECT cluster, count() FROM audit_events GROUP BY cluster ORDER BY cluster"})
    assert status == 200 and body["rows"] == [[c, n] for c, n in sorted(CLUSTERS.items())]
    assert body["sql"].startswith("SELECT cluster, count() FROM audit_events")


def test_cli_sql_refusal_and_limit(chdb_session_path, monkeypatch, capsys):
    from pipeline.cli import main
    from pipeline.config import get_settings

    dsn = f"chdb://{chdb_session_path}"
    monkeypatch.setenv("KAUDIT_QUERY_MAX_RESULT_ROWS", "10")
    monkeypatch.delenv("KAUDIT_API_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["sql", "--clickhouse", dsn, "SELECT * FROM url('http://169.254.169.254/latest', 'LineAsString')"]) == 2
        assert "refused: table function url() is not allowed" in capsys.readouterr().err
        assert main(["sql", "--clickhouse", dsn, "SELECT arrayJoin(range(1000))"]) == 3
        assert "max_result_rows" in capsys.readouterr().err
        assert main(["sql", "--clickhouse", dsn, "--format", "json", "SELECT arrayJoin(range(3)) AS n"]) == 0
        assert [json.loads(line)["n"] for line in capsys.readouterr().out.splitlines()] == [0, 1, 2]
    finally:
        get_settings.cache_clear()


# --- confinement to clusters -------------------------------------------------------------------------------------------
SCOPED = [
    # (statement, its answer when only cluster alpha and gamma are visible)
    ("SELECT count() FROM audit_events", [[7]]),
    ("SELECT DISTINCT cluster FROM audit_events ORDER BY cluster", [["alpha"], ["gamma"]]),
    ("SELECT count() FROM {db}.audit_events", [[7]]),
    ("SELECT count() FROM `{db}`.`audit_events`", [[7]]),
    ('SELECT count() FROM "{db}"."audit_events" AS "x"', [[7]]),
    ("SELECT count() FROM audit_events AS e WHERE e.cluster = 'beta'", [[0]]),
    ("SELECT count() FROM audit_events WHERE audit_events.cluster != 'alpha'", [[2]]),
    ("SELECT count() FROM audit_events AS a JOIN audit_events AS b ON a.auditid = b.auditid", [[7]]),
    ("SELECT count() FROM audit_events AS a, {db}.audit_events AS b WHERE a.auditid = b.auditid", [[7]]),
    ("SELECT count() FROM audit_events AS e JOIN alerts USING (auditid)", [[2]]),
    ("SELECT count() FROM alerts AS x LEFT JOIN audit_events AS y ON x.auditid = y.auditid", [[2]]),
    ("SELECT count() FROM (SELECT * FROM (SELECT * FROM audit_events))", [[7]]),
    ("SELECT (SELECT count() FROM audit_events) + (SELECT count() FROM alerts)", [[9]]),
    ("SELECT count() FROM audit_events WHERE auditid IN (SELECT auditid FROM alerts)", [[2]]),
    ("SELECT count() FROM audit_events WHERE cluster NOT IN (SELECT cluster FROM alerts WHERE cluster = 'alpha')",
     [[2]]),
    ("SELECT DISTINCT c FROM (SELECT cluster AS c FROM audit_events UNION ALL SELECT cluster FROM alerts) ORDER BY c",
     [["alpha"], ["gamma"]]),
    ("SELECT cluster FROM audit_events UNION DISTINCT SELECT cluster FROM {db}.alerts ORDER BY cluster",
     [["alpha"], ["gamma"]]),
    ("WITH t AS (SELECT * FROM audit_events) SELECT count() FROM t", [[7]]),
    ("WITH t AS (SELECT * FROM audit_events), u AS (SELECT * FROM t) SELECT count() FROM u JOIN t USING auditid",
     [[7]]),
    ("WITH audit_events AS (SELECT * FROM {db}.audit_events) SELECT count() FROM audit_events", [[7]]),
    ("WITH x AS (SELECT * FROM y), y AS (SELECT * FROM audit_events) SELECT count() FROM x", [[7]]),
    ("SELECT sum(events) FROM events_1m", [[7]]),
    ("SELECT count() FROM events_1m WHERE cluster IN (SELECT cluster FROM audit_events)", [[7]]),
    ("SELECT groupUniqArray(cluster) FROM (SELECT cluster FROM alerts FINAL)", [[["alpha", "gamma"]]]),
    ("SELECT count() FROM audit_events WHERE ('beta', 'beta-0') IN (SELECT cluster, auditid FROM audit_events)",
     [[0]]),
    ("SELECT count() FROM audit_events ARRAY JOIN usergroups AS g WHERE g = 'g0'", [[2]]),
]


@pytest.mark.parametrize(("sql", "expected"), SCOPED, ids=[f"{i:02d}" for i in range(len(SCOPED))])
def test_scope_to_clusters(wh, db, sql, expected):
    text = sql.format(db=db[1])
    # unscoped it sees beta as well (so that each case can fail)
    assert wh.sql(text)[1] != expected or expected == [[0]]
    stmt, settings = wh.prepare(text, ["gamma", "alpha"])
    assert "beta" not in stmt or "beta" in text
    assert wh.query(stmt, None, settings)[1] == expected
    # each layer confines on its own: the rewritten statement alone, and the engine's table filters alone
    assert wh.query(stmt)[1] == expected
    checked = wh.check(text)
    assert wh.query(checked.sql, None, settings)[1] == expected


def test_scope_empty_set_sees_nothing_and_odd_names_stay_literals(wh):
    stmt, settings = wh.prepare("SELECT count() FROM audit_events", [])
    assert wh.query(stmt, None, settings)[1] == [[0]]
    stmt, settings = wh.prepare("SELECT count() FROM audit_events", ["x') OR 1 OR cluster IN ('", "alpha"])
    assert wh.query(stmt, None, settings)[1] == [[5]]
    assert wh.sql("SELECT count() FROM alerts", clusters=["beta"])[1] == [[1]]


def test_scope_refuses_what_it_cannot_confine(wh):
    for sql in ("SELECT * FROM kaudit_migrations", "SELECT count() FROM events_1m_mv",
                "SELECT * FROM audit_events WHERE 1 IN system.one"):  # fmt: skip
        with pytest.raises(ReadOnlyError):
            wh.prepare(sql, ["alpha"])


def test_scope_verification_refuses_a_tampered_rewrite(wh):
    """The rewrite is re-parsed and re-checked: a checked AST whose confinement is removed is refused."""
    checked = wh.check("SELECT count() FROM audit_events")

    def run_without_rewrite(sql: str, params: dict[str, Any]) -> list[list[Any]]:
        if sql.startswith("SELECT formatQueryFromJSON"):
            return [["SELECT count() FROM audit_events"]]  # as if the rebuild had lost the confining subquery
        return wh._rows(sql, params)

    with pytest.raises(ReadOnlyError, match="unconfined"):
        scope_to_clusters(run_without_rewrite, checked, ["alpha"])


# --- a read-only user on a server -----------------------------------------------------------------------------------
def test_reader_user_statements_parse_with_the_engine(wh):
    stmts = reader_user_sql("kaudit_reader", hashlib.sha256(b"pw").hexdigest(), "kaudit",
                            {"max_execution_time": 30, "max_result_rows": 1000})  # fmt: skip
    assert any("readonly = 1" in s for s in stmts)
    assert any(s.startswith("GRANT SELECT ON `kaudit`.`audit_events`") for s in stmts)
    assert not any("system" in s for s in stmts)
    for stmt in stmts:
        assert wh._rows("SELECT formatQuerySingleLine({q:String})", {"q": stmt})[0][0]
    with pytest.raises(ValueError):
        reader_user_sql("x; DROP", "00", "kaudit", {})


MORE_REFUSED = [
    "SELECT {{x:String}}",
    "SELECT * FROM {{t:Identifier}}",
    "SELECT arrayReduce('file', ['{f}'])",
    "SELECT arrayReduce(concat('s', 'um'), [1])",
    "SELECT arrayReduce('lower', ['a'])",
    "SELECT * FROM (audit_events) AS x JOIN (system.users) AS u ON 1",
    "SELECT * FROM audit_events AS x, system.users",
    "WITH users AS (SELECT * FROM audit_events) SELECT * FROM system.users",
    "SELECT * FROM audit_events WHERE verb IN (SELECT * FROM view(SELECT 1))",
    "SELECT count() FROM audit_events WHERE exists(SELECT * FROM system.one)",
    "SELECT * FROM audit_events LEFT ARRAY JOIN (SELECT groupArray(name) FROM system.users) AS n",
    "SELECT sum(x) OVER (ORDER BY (SELECT count() FROM system.tables)) FROM (SELECT 1 AS x)",
    "SELECT * FROM audit_events ORDER BY (SELECT any(name) FROM system.users)",
    "SELECT * FROM audit_events GROUP BY (SELECT any(name) FROM system.users)",
    "SELECT * FROM audit_events LIMIT (SELECT count() FROM system.users)",
    "SELECT * FROM audit_events SAMPLE 0.1 WHERE 1 IN (SELECT 1 FROM system.one)",
    "SELECT count() FROM audit_events WHERE IN(cluster, system.one)",
    "SELECT count() FROM audit_events WHERE NOTIN(cluster, system.users)",
    "SELECT count() FROM audit_events WHERE globalin(cluster, system.users)",
    "SELECT count() FROM audit_events WHERE cluster IN (system.users)",
]


@pytest.mark.parametrize("sql", MORE_REFUSED, ids=[f"m{i:02d}" for i in range(len(MORE_REFUSED))])
def test_more_refused(wh, secret_file, sql):
    with pytest.raises(ReadOnlyError):
        wh.sql(sql.format(f=secret_file))


def test_array_reduce_with_an_allowed_aggregate_runs(wh):
    assert wh.sql("SELECT arrayReduce('sum', [1, 2, 3]), arrayReduce('uniqExact', ['a', 'a'])")[1] == [[6, 1]]


def test_reader_profile_sends_only_the_limits():
    from pipeline.warehouse.sqlguard import LIMIT_SETTINGS, limits_from

    s = Settings()
    assert set(limits_from(s, reader_profile=True)) == set(LIMIT_SETTINGS)
    assert limits_from(s)["readonly"] == 1 and limits_from(s)["result_overflow_mode"] == "throw"
    assert list(limits_from(s))[-1] == "readonly"  # last: the settings before it are still changeable


ANALYST_QUERIES = [
    'SELECT cluster, verb, count() FROM audit_events GROUP BY ALL ORDER BY 3 DESC',
    "SELECT countIf(verb = 'get'), toStartOfHour(request_received_ts) AS h, formatDateTime(h, '%F') FROM audit_events WHERE request_received_ts > now() - INTERVAL 1 DAY GROUP BY h",
    "SELECT username ILIKE '%admin%', username LIKE 'system:%', positionCaseInsensitive(username, 'x'), if(verb = 'get', 1, 0), multiIf(verb = 'a', 1, verb = 'b', 2, 3), CASE verb WHEN 'get' THEN 1 ELSE 0 END, CASE WHEN verb = 'x' THEN 1 END FROM audit_events",
    "SELECT any(verb), toDate(request_received_ts), arrayExists(g -> g = 'x', usergroups), has(usergroups, 'x'), date_trunc('hour', request_received_ts) FROM audit_events GROUP BY 2, 3, 4, 5",
    'SELECT verb, count() FROM audit_events GROUP BY verb WITH TOTALS',
    'SELECT verb, cluster, count() FROM audit_events GROUP BY ROLLUP(verb, cluster)',
    'SELECT verb, cluster, count() FROM audit_events GROUP BY CUBE(verb, cluster)',
    "SELECT extract(YEAR FROM request_received_ts), responsestatus_code BETWEEN 400 AND 499, objectref_name IS NULL, verb NOT IN ('get') FROM audit_events",
    'SELECT topK(10)(username), groupArray(5)(verb), argMax(verb, request_received_ts), uniq(username), lagInFrame(verb) OVER (ORDER BY request_received_ts) FROM audit_events GROUP BY verb, request_received_ts',
    "SELECT splitByChar(':', username)[1] AS ns, tuple(1, 2).1, toString(responsestatus_code), concat(verb, '/', objectref_resource) FROM audit_events LIMIT 1 BY ns",
    'SELECT DISTINCT ON (verb) verb FROM audit_events',
    'SELECT latency_us, quantiles(0.5, 0.9, 0.99)(latency_us) FROM audit_events GROUP BY latency_us',
    'SELECT verb, count() AS c FROM audit_events GROUP BY verb HAVING c > 1 ORDER BY c DESC NULLS LAST LIMIT 10 OFFSET 0',
    'SELECT toStartOfInterval(request_received_ts, INTERVAL 5 MINUTE) AS t, count() FROM audit_events GROUP BY t ORDER BY t WITH FILL STEP INTERVAL 5 MINUTE',
    "SELECT JSONExtractString(request_object, 'kind'), simpleJSONExtractString(response_object, 'kind'), annotations['authorization.k8s.io/decision'] FROM audit_events",
    'SELECT * EXCEPT (request_object, response_object) FROM audit_events LIMIT 1',
    "SELECT COLUMNS('^objectref_') FROM audit_events LIMIT 1",
    'SELECT sum(count) FROM verb_stats FINAL',
    "SELECT dateDiff('second', request_received_ts, stage_ts), toUnixTimestamp64Micro(stage_ts), now64(), today() FROM audit_events",
    "SELECT arrayFilter(x -> x != '', usergroups), arrayStringConcat(usergroups, ','), length(usergroups), empty(usergroups), mapKeys(annotations) FROM audit_events",
    'SELECT exists(SELECT 1 FROM audit_events), 1 IN (SELECT 1), (SELECT max(ts) FROM alerts)',
    'SELECT count(DISTINCT username), sumDistinct(1), groupArrayDistinct(verb) FROM audit_events',
    'SELECT verb, count() OVER w FROM audit_events WINDOW w AS (PARTITION BY verb)',
    'SELECT percent_rank() OVER (ORDER BY verb), dense_rank() OVER (ORDER BY verb), first_value(verb) OVER (ORDER BY verb) FROM audit_events',
    "SELECT lower(verb), upper(verb), substring(verb, 1, 2), replaceAll(verb, 'a', 'b'), match(verb, '^g'), extract(verb, 'g(.)'), trim(verb), startsWith(verb, 'g'), endsWith(verb, 't'), reverse(verb), IPv4NumToString(toUInt32(1)), toIPv4('1.2.3.4'), isIPAddressInRange('1.2.3.4', '1.2.3.0/24'), round(1.5, 1), floor(1.5), greatest(1, 2), coalesce(NULL, 1), ifNull(NULL, 1), nullIf(1, 1), toTypeName(1), cityHash64('a'), base64Encode('a'), hex('a') FROM audit_events",
]


@pytest.mark.parametrize("sql", ANALYST_QUERIES, ids=[f"a{i:02d}" for i in range(len(ANALYST_QUERIES))])
def test_analyst_query_runs(wh, sql):
    """Accepted by the guard and run by the engine (an empty answer may come without columns)."""
    cols, rows = wh.sql(sql)
    assert cols or not rows


def test_query_language_limits_in_the_api_and_the_cli_path(db):
    """GET /api/query and `kaudit query` (pipeline.query.execute) name the limit too."""
    import urllib.parse

    from pipeline.query.execute import ExecError
    from pipeline.query.execute import run as execute
    from pipeline.warehouse.api import make_app
    from tests.test_web_support import ServerThread

    s, name = db
    s = s.model_copy(update={"query_max_rows_to_read": 3})
    with pytest.raises(ExecError) as err:
        execute(s, query='verb="get" groupby cluster', database=name)
    assert err.value.limit == "max_rows_to_read" and "max_rows_to_read" in str(err.value)
    with pytest.raises(ExecError) as err:
        execute(s, sql="SELECT * FROM system.users", database=name)
    assert str(err.value).startswith("refused: table system.users") and err.value.limit is None
    w = Warehouse(s, max_workers=1, database=name)
    srv = ServerThread(make_app(s, w))
    try:
        url = f"{srv.url}/api/query?" + urllib.parse.urlencode({"q": 'verb="get" groupby cluster'})
        try:
            urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the test server
            raise AssertionError("no limit")
        except urllib.error.HTTPError as e:
            assert e.code == 422 and json.loads(e.read())["limit"] == "max_rows_to_read"
    finally:
        srv.stop()
        w.close()


def test_cluster_settings_confine_compiled_queries(wh):
    from pipeline.query import compile_query

    cq = compile_query("groupby cluster")
    everything = dict(map(tuple, wh.query(cq.sql, cq.params)[1]))
    assert everything == CLUSTERS
    _, rows = wh.query(cq.sql, cq.params, wh.cluster_settings(["beta"]))
    assert dict(map(tuple, rows)) == {"beta": 3}
    assert wh.query(cq.sql, cq.params, wh.cluster_settings([]))[1] == []


def test_a_cte_may_not_take_the_name_of_a_table_it_would_hide(db):
    """Backstop under the CTE scoping: a CTE named like a non-kaudit table of the database is refused."""
    from pipeline.warehouse.client import open_client

    s, name = db
    raw = open_client(s, database=name)
    raw.command("CREATE TABLE IF NOT EXISTS private_notes (cluster String, note String) ENGINE = Memory")
    w = small_limits(db)
    try:
        with pytest.raises(ReadOnlyError, match="private_notes"):
            w.sql("WITH private_notes AS (SELECT 1) SELECT * FROM private_notes")
        with pytest.raises(ReadOnlyError, match="private_notes"):
            w.sql("SELECT * FROM private_notes")
        assert w.sql("WITH notes AS (SELECT 1 AS x) SELECT x FROM notes")[1] == [[1]]
    finally:
        w.close()
        raw.command("DROP TABLE private_notes")


ORACLES = [  # each raises an error iff it evaluates a row with auditid = {p}
    "SELECT count() FROM audit_events WHERE intDiv(1, if(auditid = '{p}', 0, 1)) = 1",
    "SELECT count() FROM audit_events WHERE toUInt64(if(auditid = '{p}', 'x', '1')) = 1",
    "SELECT count() FROM (SELECT * FROM audit_events) WHERE intDiv(1, if(auditid = '{p}', 0, 1)) = 1",
    "SELECT count() FROM audit_events AS a JOIN audit_events AS b ON a.auditid = b.auditid "
    "AND intDiv(1, if(a.auditid = '{p}', 0, 1)) = 1",
    "SELECT count() FROM audit_events WHERE auditid IN (SELECT auditid FROM audit_events "
    "WHERE intDiv(1, if(auditid = '{p}', 0, 1)) = 1)",
    "WITH t AS (SELECT * FROM audit_events) SELECT count() FROM t WHERE intDiv(1, if(auditid = '{p}', 0, 1)) = 1",
    "SELECT count() FROM (SELECT intDiv(1, if(auditid = '{p}', 0, 1)) AS d FROM audit_events) WHERE d = 1",
    "SELECT count() FROM audit_events WHERE cluster = 'nope' OR intDiv(1, if(auditid = '{p}', 0, 1)) = 1",
    "SELECT count() FROM alerts FINAL WHERE intDiv(1, if(auditid = '{p}', 0, 1)) = 1",
]


@pytest.mark.parametrize("sql", ORACLES, ids=[f"o{i}" for i in range(len(ORACLES))])
def test_scoped_expressions_never_see_other_clusters_rows(wh, sql):
    """No error oracle: a scoped reader's expressions run only on its clusters' rows (beta-0 exists, in beta)."""
    stmt, settings = wh.prepare(sql.format(p="beta-0"), ["alpha"])
    wh.query(stmt, None, settings)  # no "Division by zero": the beta row was never evaluated
    stmt, settings = wh.prepare(sql.format(p="alpha-0"), ["alpha"])
    with pytest.raises(Exception, match="Division by zero|Cannot parse"):
        wh.query(stmt, None, settings)  # the probe does work on the reader's own rows


def test_scoped_prewhere_is_refused(wh):
    with pytest.raises(ReadOnlyError, match="PREWHERE"):
        wh.prepare("SELECT count() FROM audit_events PREWHERE verb = 'get'", ["alpha"])
    assert wh.sql("SELECT count() FROM audit_events PREWHERE verb = 'get'")[1] == [[4]]  # unscoped it is fine


def test_the_error_oracle_is_real_without_the_evaluation_settings(wh):
    """Why NO_EARLY_EVALUATION exists: with the engine's default optimizations the probe runs on beta's rows."""
    from pipeline.warehouse.sqlguard import NO_EARLY_EVALUATION

    stmt, settings = wh.prepare(ORACLES[0].format(p="beta-0"), ["alpha"])
    loose = {k: v for k, v in settings.items() if k not in NO_EARLY_EVALUATION}
    with pytest.raises(Exception, match="Division by zero"):
        wh.query(stmt, None, loose)


@pytest.mark.parametrize("text", [
    "groupby verb, avg(latency), sd(latency), percentile(latency, 99)",
    "groupby username sort by count_distinct(verb) desc, username asc",
    "groupby verb, count_distinct(username), count_distinct(auditid)",
])  # fmt: skip
def test_compiled_aggregates_pass_the_guard_and_its_confinement(wh, text):
    """The SQL the API shows for a query (`"sql"`) runs as an admin's raw SQL too: every function the compiler
    emits (quantileExactInclusive, reinterpretAsUInt128(sipHash128(..)), ...) is allowed, with the same answer,
    and confined to clusters the same way as the compiled query (latency too: the MATERIALIZED latency_us passes
    through the confining subquery)."""
    from pipeline.query import compile_query

    cq = compile_query(text)
    assert not cq.params  # a raw statement has no parameters
    everything = wh.sql(cq.sql)[1]
    assert everything == wh.query(cq.sql)[1] and sum(r[1] for r in everything) == sum(CLUSTERS.values())
    scoped = wh.sql(cq.sql, clusters=["gamma", "alpha"])[1]
    confined = compile_query(text, allowed_clusters=["gamma", "alpha"])
    compiled = wh.query(confined.sql, confined.params, wh.cluster_settings(["gamma", "alpha"]))[1]
    assert scoped == compiled and scoped != everything  # beta's events count unconfined (so that this can fail)
    assert sum(r[1] for r in scoped) == CLUSTERS["alpha"] + CLUSTERS["gamma"]
