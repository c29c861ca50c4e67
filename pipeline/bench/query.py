"""Query latency of the three seed queries and of the other operators over synthetic events in chDB (goal: p50 <
200 ms at 10M events; a 30-day `timeslice ... before` under 1 s).

    python -m pipeline.bench.query [--rows 10000000] [--days 60] [--runs 10] [--path DIR] [--plain] [--seed-only]
                                   [--confined prod,dev [--scoped]] [--compare]

The events are spread evenly over --days (default 60, so that 30 days and the 30 before them hold data).

Queries run as the API and `kaudit query` run them (pipeline.query.run_compiled: listings search the newest
events first); --plain also times each compiled statement on its own, for comparison. --path keeps the
database in DIR and reuses it when it already holds --rows events.

--confined: every query as a reader of those clusters runs it (compiled with allowed_clusters, executed with the
engine's table filters, as the API does); --scoped adds the evaluation settings of a scoped raw-SQL statement
(sqlguard.NO_EARLY_EVALUATION: no PREWHERE, no predicate push-down), the strictest way a confined read runs.
--compare: before the list, the shapes migration 8 and the UInt128 count_distinct sped up, timed against the
schema and SQL before them in the same run (a copy of the events in database kaudit_before8, kept in --path), and
the insert cost of 1M events into both schemas.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.query import compile_query, run_compiled
from pipeline.warehouse.client import open_client
from pipeline.warehouse.migrations import EVENT_INSERT_COLUMNS, migrate
from pipeline.warehouse.sqlguard import NO_EARLY_EVALUATION, cluster_filters

GOAL_MS = 200
SEED = [
    'logtype="Kubernetes Audit Logs" and verb="delete" groupby objectref_resource,username',
    'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" groupby username',
    'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" and '
    'username="system:serviceaccount:default:demo"',
]

# The other operators, over the whole table unless they say otherwise; (text, from, to) with days from the start.
OPERATORS = [
    ("verb=delete count", None),
    ("responsestatus_code=403 count_distinct(username)", None),
    ("groupby verb, avg(latency), sd(latency), percentile(latency, 99)", None),
    ("percentile(latency, 99)", None),
    ("responsestatus_code=403 distinct(username)", None),
    ("ratio(responsestatus_code=403, responsestatus_code>0)", None),
    ("groupby username having count > 20000 sort by count_distinct(objectref_resource) desc", None),
    ("groupby username top 10", None),
    ("timeslice 1h groupby username top 5", None),
    ('monitor_name="prod" and verb=delete groupby objectref_resource', None),
    ("timeslice 1h count", (0, 7)),
    ("verb=delete count before 1d", (29, 30)),
    ("timeslice 1d groupby verb before 1d", (30, 60)),  # 30 days, overlapping periods
    ("timeslice 1d groupby verb before 30d", (30, 60)),  # 30 days against the 30 before
    ("timeslice 1h before 7d", (30, 60)),
]
BEFORE_GOAL_MS = 1000
# --compare: the shapes above the goal before migrations 8 and 9 (latency_us and request_received_ts codecs) and the
# UInt128 count_distinct
COMPARE = [
    "groupby verb, avg(latency), sd(latency), percentile(latency, 99)",
    "groupby username having count > 20000 sort by count_distinct(objectref_resource) desc",
    "timeslice 1h groupby username top 5",  # migration 9 (request_received_ts codec)
]
BEFORE8 = "kaudit_before8"

FILL = """
INSERT INTO audit_events (cluster, auditid, stage, level, verb, request_uri, username, usergroups, sourceips,
  useragent, objectref_resource, objectref_namespace, objectref_name, responsestatus_code, annotations,
  request_received_ts, stage_ts, source_id)
SELECT
  ['prod', 'staging', 'dev'][number % 3 + 1],
  toString(generateUUIDv4()),
  ['RequestReceived', 'ResponseComplete'][number % 2 + 1],
  'Metadata',
  ['get', 'list', 'watch', 'create', 'update', 'patch', 'delete'][(intHash32(number) % 20 < 14) ? intHash32(number) % 3 + 1 : intHash32(number) % 7 + 1],
  concat('/api/v1/namespaces/ns', toString(number % 50), '/pods'),
  if(number % 97 = 0, 'system:serviceaccount:default:demo', concat('user', toString(intHash32(number) % 500))),
  ['system:authenticated'],
  [concat('10.0.', toString(number % 256), '.', toString(intHash64(number) % 256))],
  'kubectl/v1.30.0',
  ['pods', 'secrets', 'configmaps', 'deployments', 'services', 'nodes', 'leases'][intHash64(number) % 7 + 1],
  concat('ns', toString(number % 50)),
  concat('obj-', toString(number % 10000)),
  [200, 200, 200, 201, 403, 404, 409][intHash64(number + 1) % 7 + 1],
  map('authorization.k8s.io/decision', 'allow'),
  fromUnixTimestamp64Micro(toInt64(1735689600000000 + number * 25000)),
  fromUnixTimestamp64Micro(toInt64(1735689600000000 + number * 25000 + 1500 + intHash32(number) % 200000)),
  concat(toString(number % 4), ':', toString(intDiv(number, 400)))
FROM numbers({n:UInt64})
"""


CPU_MS: list[float] = []  # process CPU time of each timed run (chDB runs in this process): the load-free cost


def _time(fn, runs: int) -> tuple[list[float], list]:
    times, rows, cpu = [], [], []
    for _ in range(runs + 1):
        t, c = time.perf_counter(), time.process_time()
        rows = fn()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    CPU_MS[:] = cpu[1:]
    return times[1:], rows  # the first run warms caches


def _pct(times: list[float], q: float) -> float:
    s = sorted(times)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _sql_before(sql: str) -> str:
    """The compiler's SQL before count_distinct hashed to UInt128 (uniqExact of sipHash128's FixedString(16))."""
    return re.sub(r"reinterpretAsUInt128\(sipHash128\(([^()]*)\)\)", r"sipHash128(\1)", sql)


def _settle(c, label: str) -> None:  # noqa: ANN001
    """Wait for audit_events' mutations (migration 8 rewrites stored rows in the background) and merges to end."""
    t0 = time.perf_counter()
    busy = ("SELECT (SELECT count() FROM system.mutations WHERE database = currentDatabase() AND table = 'audit_events' "
            "AND NOT is_done) + (SELECT count() FROM system.merges WHERE database = currentDatabase() "
            "AND table = 'audit_events')")  # fmt: skip
    quiet = 0
    while quiet < 4:  # merges come in waves: quiet for 2 s
        quiet = 0 if c.query(busy).result_rows[0][0] else quiet + 1
        time.sleep(0.5)
    if time.perf_counter() - t0 > 1:
        print(f"waited {time.perf_counter() - t0:.1f}s for {label}'s mutations and merges")


def _rewrite_older_parts(c) -> None:  # noqa: ANN001
    """Parts stored before the newest codec migration (9) keep their old codec until a merge rewrites them
    (migrations.TIME_CODEC): rewrite a reused database once, so that it is timed as new data is stored."""
    old = c.query("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = 'audit_events' AND "
                  "active AND modification_time < (SELECT max(applied_at) FROM kaudit_migrations WHERE version = 9)"
                  ).result_rows[0][0]  # fmt: skip
    if old:
        t0 = time.perf_counter()
        c.command("OPTIMIZE TABLE audit_events FINAL")
        print(f"rewrote {old} part(s) stored before migration 9 with its codec in {time.perf_counter() - t0:.1f}s "
              "(merges do it over time)")  # fmt: skip


def _rounded(rows: list) -> list:
    """Rows in a comparable form: floats to 10 significant digits (avg and sd sum in the order parts are read)."""
    return sorted(tuple(float(f"{v:.10g}") if isinstance(v, float) else v for v in r) for r in rows)


def _compare(s: Settings, c, rows: int, runs: int, fill: str) -> None:  # noqa: ANN001
    """Old schema + old SQL against new schema + new SQL, runs interleaved so that both see the same load."""
    c.command(f"CREATE DATABASE IF NOT EXISTS {BEFORE8}")
    old = open_client(s, database=BEFORE8)
    migrate(old, s, upto=7)
    if old.query("SELECT count() FROM audit_events").result_rows[0][0] != rows:
        cols = ", ".join(EVENT_INSERT_COLUMNS)
        old.command("TRUNCATE TABLE audit_events")
        t0 = time.perf_counter()
        src = c.query("SELECT currentDatabase()").result_rows[0][0]
        old.command(f"INSERT INTO {BEFORE8}.audit_events ({cols}) SELECT {cols} FROM {src}.audit_events")
        print(f"copied {rows:,} events to {BEFORE8} (schema before migrations 8 and 9) in {time.perf_counter() - t0:.1f}s")
    for cl in (old, c):  # one part per month in both, so that they differ in the schema only
        cl.command("OPTIMIZE TABLE audit_events FINAL SETTINGS optimize_skip_merged_partitions = 1")
    _settle(old, BEFORE8)
    for column in ("latency_us", "request_received_ts"):
        codec = {db: cl.query("SELECT compression_codec, data_compressed_bytes FROM system.columns WHERE database = "
                              "currentDatabase() AND table = 'audit_events' AND name = {c:String}",
                              parameters={"c": column}).result_rows[0]
                 for db, cl in (("before", old), ("now", c))}  # fmt: skip
        print(f"{column}: before {codec['before'][0] or 'default codec'} {codec['before'][1] / 1e6:.1f} MB, "
              f"now {codec['now'][0]} {codec['now'][1] / 1e6:.1f} MB")  # fmt: skip
    for text in COMPARE:
        q = compile_query(text)
        res: dict[str, tuple[list[float], list[float], list]] = {"before": ([], [], []), "now": ([], [], [])}
        for i in range(runs + 1):
            for name, cl, sql in (("before", old, _sql_before(q.sql)), ("now", c, q.sql)):
                t, cp = time.perf_counter(), time.process_time()
                out = cl.query(sql, parameters=q.params).result_rows
                if i:  # the first run warms caches
                    res[name][0].append((time.perf_counter() - t) * 1000)
                    res[name][1].append((time.process_time() - cp) * 1000)
                res[name][2][:] = out
        same = "same rows" if _rounded(res["before"][2]) == _rounded(res["now"][2]) else "ROWS DIFFER"
        for name in ("before", "now"):
            wall, cpu, _ = res[name]
            print(f"  {name:6s} p50 {statistics.median(wall):7.1f} ms  p90 {_pct(wall, 0.9):7.1f} ms  "
                  f"cpu {statistics.median(cpu):7.1f} ms  {text}")  # fmt: skip
        print(f"  {same}")
    # insert cost: 1M events into a fresh table of each schema, interleaved, after its merges settled
    clients = {}
    for name, upto in (("before", 7), ("now", None)):
        db = f"kaudit_insert_{name}"
        c.command(f"DROP DATABASE IF EXISTS {db}")
        c.command(f"CREATE DATABASE {db}")
        clients[name] = open_client(s, database=db)
        migrate(clients[name], s, upto=upto)
    cost: dict[str, tuple[list[float], list[float]]] = {"before": ([], []), "now": ([], [])}
    for _ in range(3):
        for name, ic in clients.items():
            ic.command("TRUNCATE TABLE audit_events")
            _settle(ic, name)
            t, cp = time.perf_counter(), time.process_time()
            ic.command(fill.replace("FROM numbers({n:UInt64})", "FROM numbers(1000000)"))
            cost[name][0].append(time.perf_counter() - t)
            cost[name][1].append(time.process_time() - cp)
    for name in clients:
        c.command(f"DROP DATABASE kaudit_insert_{name}")
        wall, cpu = cost[name]
        print(f"  insert 1M events, schema {name}: wall {statistics.median(wall) * 1000:.0f} ms  "
              f"cpu {statistics.median(cpu) * 1000:.0f} ms (median of 3)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--path", type=Path, help="keep the database here (reused if it holds --rows events)")
    ap.add_argument("--plain", action="store_true", help="also time each compiled statement on its own")
    ap.add_argument("--days", type=float, default=60, help="the events span this many days (default 60)")
    ap.add_argument("--seed-only", action="store_true", help="only the three seed queries")
    ap.add_argument("--confined", help="run every query as a reader of these clusters (comma-separated)")
    ap.add_argument("--scoped", action="store_true", help="with --confined: also NO_EARLY_EVALUATION")
    ap.add_argument("--compare", action="store_true", help="first time the sped-up shapes against the old schema/SQL")
    args = ap.parse_args()
    tmp = args.path or Path(tempfile.mkdtemp(prefix="kaudit-bench-query-"))
    s = Settings(clickhouse_dsn=f"chdb://{tmp / 'chdb'}", var=tmp)
    c = open_client(s)
    migrate(c, s)
    step_us = max(1, int(args.days * 86400e6 / max(args.rows, 1)))
    have = c.query("SELECT count() FROM audit_events").result_rows[0][0]
    span = c.query("SELECT toUnixTimestamp64Micro(max(request_received_ts)) - toUnixTimestamp64Micro(min(request_received_ts)) "
                   "FROM audit_events").result_rows[0][0]  # fmt: skip
    if have == args.rows and abs(span - step_us * (args.rows - 1)) <= step_us:
        print(f"reusing {have:,} events in {tmp}")
        _rewrite_older_parts(c)
    else:
        c.command("TRUNCATE TABLE audit_events")
        t0 = time.perf_counter()
        done = 0
        while done < args.rows:  # in 1M steps to keep memory flat
            step = min(1_000_000, args.rows - done)
            c.command(FILL.replace("FROM numbers({n:UInt64})", f"FROM numbers({done}, {step})")
                      .replace("number * 25000", f"number * {step_us}"))  # fmt: skip
            done += step
        print(f"filled {args.rows:,} events in {time.perf_counter() - t0:.1f}s ({tmp})")

    allowed = [x for x in args.confined.split(",") if x] if args.confined is not None else None
    settings: dict = {}
    if allowed is not None:
        database = c.query("SELECT currentDatabase()").result_rows[0][0]
        settings = {**cluster_filters(database, allowed), **(NO_EARLY_EVALUATION if args.scoped else {})}

    def query(sql: str, params: dict) -> tuple[list[str], list]:
        res = c.query(sql, parameters=params, settings=settings)
        return list(res.column_names), res.result_rows

    def compile_(text: str, **kw: str) -> object:
        return compile_query(text, allowed_clusters=allowed, **kw)

    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores (p50/p90/max are wall "
          "times and grow with the load; cpu is this process's CPU per query, all threads)")  # fmt: skip
    _settle(c, "audit_events")
    if allowed is not None:
        print(f"confined to clusters {allowed}" + (" with NO_EARLY_EVALUATION" if args.scoped else ""))
    if args.compare:
        _compare(s, c, args.rows, args.runs, FILL.replace("number * 25000", f"number * {step_us}"))
    worst = 0.0
    for text in SEED:
        q = compile_(text)
        times, (_cols, rows) = _time(lambda q=q: run_compiled(query, q), args.runs)
        p50 = statistics.median(times)
        worst = max(worst, p50)
        p90, top = _pct(times, 0.9), max(times)
        print(f"p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  max {top:7.1f} ms  cpu {statistics.median(CPU_MS):7.1f} ms  "
              f"rows {len(rows):5d}  {text}")  # fmt: skip
        if args.plain:
            times, plain = _time(lambda q=q: c.query(q.sql, parameters=q.params, settings=settings).result_rows, args.runs)
            same = "same rows" if plain == rows else "ROWS DIFFER"
            p50_plain, p90_plain = statistics.median(times), _pct(times, 0.9)
            print(f"    plain statement: p50 {p50_plain:7.1f} ms  p90 {p90_plain:7.1f} ms  {same}")
    worst_before = 0.0
    if not args.seed_only:
        t0_us = 1735689600000000
        for text, days in OPERATORS:
            kw = {}
            if days:
                kw = {"from_": str((t0_us + days[0] * 86400_000_000) / 1e6), "to": str((t0_us + days[1] * 86400_000_000) / 1e6)}
            q = compile_(text, **kw)
            times, (_cols, rows) = _time(lambda q=q: run_compiled(query, q), args.runs)
            p50 = statistics.median(times)
            if "before" in text and days and days[1] - days[0] >= 30:
                worst_before = max(worst_before, p50)
            else:
                worst = max(worst, p50)
            span = f" ({days[1] - days[0]} d)" if days else ""
            print(f"p50 {p50:7.1f} ms  p90 {_pct(times, 0.9):7.1f} ms  max {max(times):7.1f} ms  "
                  f"cpu {statistics.median(CPU_MS):7.1f} ms  rows {len(rows):5d}  {text}{span}")  # fmt: skip
    verdict = "met" if worst < GOAL_MS else "NOT met"
    print(f"goal p50 < {GOAL_MS} ms at {args.rows:,} events over {args.days:g} days: {verdict} (slowest p50 {worst:.1f} ms)")
    if worst_before:
        verdict = "met" if worst_before < BEFORE_GOAL_MS else "NOT met"
        print(f"goal 30-day timeslice ... before < {BEFORE_GOAL_MS} ms: {verdict} (slowest p50 {worst_before:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
