"""Dashboard responsiveness on a large warehouse: generate N synthetic events inside chDB (INSERT ... SELECT
FROM numbers(N), so the rollup MV runs as in production), then time every dashboard endpoint over several
time ranges through the real aiohttp app.

    python -m pipeline.bench.web --events 10000000          # make bench-web
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from pathlib import Path

GEN_SQL = """
INSERT INTO audit_events (cluster, auditid, stage, level, verb, request_uri, username, usergroups, sourceips,
    useragent, objectref_resource, objectref_namespace, objectref_name, objectref_apigroup, objectref_apiversion,
    responsestatus_code, decision, request_received_ts, stage_ts, source_id)
SELECT
    ['prod-eu', 'prod-us', 'staging'][1 + number % 3] AS cluster,
    toString(generateUUIDv4()) AS auditid,
    'ResponseComplete',
    'Metadata',
    ['get', 'list', 'watch', 'get', 'list', 'create', 'update', 'patch', 'delete', 'get'][1 + (number * 7) % 10] AS verb,
    concat('/api/v1/namespaces/ns', toString(number % 50), '/pods'),
    if(number % 97 = 0, concat('system:serviceaccount:ns', toString(number % 50), ':sa'),
       concat('user', toString((number * 13) % 200))) AS username,
    ['system:authenticated'],
    [concat('10.0.', toString(number % 17), '.', toString(number % 251))],
    ['kubectl/v1.30.0', 'kube-controller-manager/v1.30.0', 'kubelet/v1.30.0', 'argocd/v2.10'][1 + number % 4],
    ['pods', 'configmaps', 'secrets', 'deployments', 'services', 'nodes', 'leases', 'events'][1 + (number * 3) % 8],
    concat('ns', toString(number % 50)),
    concat('obj-', toString(number % 1000)),
    '', 'v1',
    multiIf(number % 53 = 0, 403, number % 211 = 0, 401, number % 17 = 0, 404, number % 29 = 0, 201, 200),
    if(number % 53 = 0, 'forbid', 'allow'),
    fromUnixTimestamp64Micro(toInt64({now:Int64} - intHash64(number) % {span:Int64}), 'UTC') AS ts,
    ts,
    concat('bench:', toString(intDiv(number, 100000)))
FROM numbers({n:UInt64})
"""


async def _time_endpoints(app_factory, ranges: list[str], repeat: int) -> list[tuple[str, str, list[float]]]:
    from aiohttp.test_utils import TestClient, TestServer

    out = []
    async with TestClient(TestServer(app_factory())) as cl:
        for since in ranges:
            for name, path, extra in (
                ("widgets (all 9)", "/api/dashboard/widgets", {}),
                ("events 403 page", "/api/dashboard/events", {"responsestatus_code": "403", "limit": "100"}),
                ("events user page", "/api/dashboard/events", {"username": "user7", "limit": "100"}),
                ("rbac explain", "/api/rbac", {"user": "system:serviceaccount:ns3:sa"}),
            ):
                times = []
                for _ in range(repeat):
                    t0 = time.perf_counter()
                    r = await cl.get(path, params={"since": since, **extra})
                    await r.read()
                    assert r.status == 200, await r.text()
                    times.append((time.perf_counter() - t0) * 1000)
                out.append((since, name, times))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--events", type=int, default=10_000_000, help="synthetic events to generate (default 10M)"
    )
    p.add_argument("--days", type=int, default=30, help="spread them over this many days before now")
    p.add_argument("--path", default="/tmp/kaudit-bench-web/chdb", help="chDB folder (recreated)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the data (reuse it with --events 0)")
    a = p.parse_args(argv)

    from aiohttp import web

    from pipeline.config import Settings
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate
    from pipeline.warehouse.reader import Warehouse
    from pipeline.web import routes

    path = Path(a.path)
    if a.events and path.exists():
        shutil.rmtree(path)
    s = Settings(clickhouse_dsn=f"chdb://{path}")
    client = open_client(s)
    migrate(client, s)
    if a.events:
        t0 = time.perf_counter()
        now = int(time.time() * 1_000_000)
        client.command(GEN_SQL, parameters={"n": a.events, "now": now, "span": a.days * 86400 * 1_000_000})
        client.command("OPTIMIZE TABLE events_1m FINAL")  # what background merges do over time
        print(f"generated {a.events:,} events in {time.perf_counter() - t0:.1f} s")
    total = client.query("SELECT count() FROM audit_events").result_rows[0][0]
    rollup = client.query("SELECT count(), sum(events) FROM events_1m").result_rows[0]
    print(f"audit_events {total:,} rows; events_1m {rollup[0]:,} rows summing {rollup[1]:,}")
    wh = Warehouse(s)

    def factory() -> web.Application:
        app = web.Application()
        routes.setup(app, s, wh)
        return app

    results = asyncio.run(_time_endpoints(factory, ["1h", "24h", "7d", "30d"], a.repeat))
    print(f"\n{'range':>5}  {'endpoint':<18} {'p50 ms':>8} {'max ms':>8}")
    for since, name, times in results:
        print(f"{since:>5}  {name:<18} {statistics.median(times):8.1f} {max(times):8.1f}")
    wh.close()
    client.close()
    if not a.keep and a.events:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
