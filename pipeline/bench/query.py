"""Query latency of the three seed queries over synthetic events in chDB (goal: p50 < 200 ms at 10M events).

    python -m pipeline.bench.query [--rows 10000000] [--runs 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.config import Settings
from pipeline.query import compile_query
from pipeline.warehouse.client import open_client
from pipeline.warehouse.migrations import migrate

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kaudit-bench-query-"))
    s = Settings(clickhouse_dsn=f"chdb://{tmp / 'chdb'}", var=tmp)
    c = open_client(s)
    migrate(c, s)
    t0 = time.perf_counter()
    done = 0
    while done < args.rows:  # in 1M steps to keep memory flat
        step = min(1_000_000, args.rows - done)
        c.command(FILL.replace("FROM numbers({n:UInt64})", f"FROM numbers({done}, {step})"))
        done += step
    print(f"filled {args.rows:,} events in {time.perf_counter() - t0:.1f}s")
    for text in SEED:
        q = compile_query(text)
        times = []
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            rows = c.query(q.sql, parameters=q.params).result_rows
            times.append((time.perf_counter() - t) * 1000)
        times = times[1:]  # first run warms caches
        print(f"p50 {statistics.median(times):7.1f} ms  max {max(times):7.1f} ms  rows {len(rows):5d}  {text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
