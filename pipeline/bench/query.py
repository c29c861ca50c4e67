"""Query latency of the three seed queries over synthetic events in chDB (goal: p50 < 200 ms at 10M events).

    python -m pipeline.bench.query [--rows 10000000] [--runs 10] [--path DIR] [--plain]

Queries run as the API and `kaudit query` run them (pipeline.query.run_compiled: listings search the newest
events first); --plain also times each compiled statement on its own, for comparison. --path keeps the
database in DIR and reuses it when it already holds --rows events.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.query import compile_query, run_compiled
from pipeline.warehouse.client import open_client
from pipeline.warehouse.migrations import migrate

GOAL_MS = 200
SEED = [
    'logtype="Kubernetes Audit Logs" and verb="delete" groupby objectref_resource,username',
    'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" groupby username',
    'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" and '
    'username="system:serviceaccount:default:demo"',
]

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
  fromUnixTimestamp64Micro(toInt64(1735689600000000 + number * 25000 + 1500)),
  concat(toString(number % 4), ':', toString(intDiv(number, 400)))
FROM numbers({n:UInt64})
"""


def _time(fn, runs: int) -> tuple[list[float], list]:
    times, rows = [], []
    for _ in range(runs + 1):
        t = time.perf_counter()
        rows = fn()
        times.append((time.perf_counter() - t) * 1000)
    return times[1:], rows  # the first run warms caches


def _pct(times: list[float], q: float) -> float:
    s = sorted(times)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--path", type=Path, help="keep the database here (reused if it holds --rows events)")
    ap.add_argument("--plain", action="store_true", help="also time each compiled statement on its own")
    args = ap.parse_args()
    tmp = args.path or Path(tempfile.mkdtemp(prefix="kaudit-bench-query-"))
    s = Settings(clickhouse_dsn=f"chdb://{tmp / 'chdb'}", var=tmp)
    c = open_client(s)
    migrate(c, s)
    have = c.query("SELECT count() FROM audit_events").result_rows[0][0]
    if have == args.rows:
        print(f"reusing {have:,} events in {tmp}")
    else:
        c.command("TRUNCATE TABLE audit_events")
        t0 = time.perf_counter()
        done = 0
        while done < args.rows:  # in 1M steps to keep memory flat
            step = min(1_000_000, args.rows - done)
            c.command(FILL.replace("FROM numbers({n:UInt64})", f"FROM numbers({done}, {step})"))
            done += step
        print(f"filled {args.rows:,} events in {time.perf_counter() - t0:.1f}s ({tmp})")

    def query(sql: str, params: dict) -> tuple[list[str], list]:
        res = c.query(sql, parameters=params)
        return list(res.column_names), res.result_rows

    worst = 0.0
    for text in SEED:
        q = compile_query(text)
        times, (_cols, rows) = _time(lambda q=q: run_compiled(query, q), args.runs)
        p50 = statistics.median(times)
        worst = max(worst, p50)
        p90, top = _pct(times, 0.9), max(times)
        print(f"p50 {p50:7.1f} ms  p90 {p90:7.1f} ms  max {top:7.1f} ms  rows {len(rows):5d}  {text}")
        if args.plain:
            times, plain = _time(lambda q=q: c.query(q.sql, parameters=q.params).result_rows, args.runs)
            same = "same rows" if plain == rows else "ROWS DIFFER"
            p50_plain, p90_plain = statistics.median(times), _pct(times, 0.9)
            print(f"    plain statement: p50 {p50_plain:7.1f} ms  p90 {p90_plain:7.1f} ms  {same}")
    verdict = "met" if worst < GOAL_MS else "NOT met"
    print(f"goal p50 < {GOAL_MS} ms at {args.rows:,} events: {verdict} (slowest p50 {worst:.1f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
