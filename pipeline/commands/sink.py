"""kaudit sink: Kafka output topics -> ClickHouse, idempotently; in embedded mode also the query API."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import threading

from pipeline.commands._common import add_clickhouse_flag, add_kafka_flag, settings_from

HELP = "write events, stats and alerts from Kafka to ClickHouse (and serve the query API in embedded mode)"
DESCRIPTION = """\
Consume k8s-audit-events, -verb-stats, -status-stats and -alerts (one consumer group) and write them to
ClickHouse in large batches (--max-rows / --max-seconds). Offsets are committed only after ClickHouse
acknowledged the insert; a source_id (raw partition:offset) already stored is never inserted again, so a
restart after kill -9, a rebalance or a duplicate worker output never duplicates rows. If ClickHouse is down
or the embedded chDB path is held by another process, the sink retries with backoff and logs it.

Embedded mode (default: chDB under KAUDIT_VAR/chdb): this process owns the warehouse and serves the read-only
query API (and the dashboard when installed) on KAUDIT_API_HOST:KAUDIT_API_PORT; `kaudit query`/`sql` use it.
With a server DSN (--clickhouse http://host:8123/db) run as many sinks as you like; queries go to the server.
Metrics: /metrics on the API, or --metrics-port.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_kafka_flag(p)
    add_clickhouse_flag(p)
    p.add_argument("--group", default="kaudit-sink", help="Kafka consumer group (default kaudit-sink)")
    p.add_argument(
        "--max-rows", type=int, help="rows per insert batch (KAUDIT_SINK_BATCH_ROWS, default 200000)"
    )
    p.add_argument("--max-seconds", type=float,
                   help="longest wait before a partial batch is written (KAUDIT_SINK_BATCH_SECONDS, default 2.0)")  # fmt: skip
    p.add_argument("--api-host", help="query API address (KAUDIT_API_HOST, default 127.0.0.1)")
    p.add_argument("--api-port", type=int, help="query API port (KAUDIT_API_PORT, default 8080; 0 = any)")
    p.add_argument("--no-api", action="store_true", help="do not serve the query API in embedded mode")
    p.add_argument("--api-readers-file", metavar="FILE",
                   help="reader tokens -> clusters, role for the query API (KAUDIT_API_READERS_FILE; see kaudit serve --help)")  # fmt: skip
    p.add_argument("--api-tls-cert", metavar="PEM", help="serve the query API over HTTPS (KAUDIT_API_TLS_CERT)")
    p.add_argument("--api-tls-key", metavar="PEM", help="private key of --api-tls-cert (KAUDIT_API_TLS_KEY)")
    p.add_argument("--metrics-port", type=int, help="also serve Prometheus metrics on this port")


def run(args: argparse.Namespace) -> int:
    from pipeline.gc_tuning import tune_gc
    from pipeline.sinks.runner import Sink, SinkOptions
    from pipeline.warehouse.api import ApiServer
    from pipeline.warehouse.reader import Warehouse

    log = logging.getLogger("kaudit.sink")
    s = settings_from(args, kafka_bootstrap="kafka", clickhouse_dsn="clickhouse", api_host="api_host",
                      api_port="api_port", api_readers_file="api_readers_file", api_tls_cert="api_tls_cert",
                      api_tls_key="api_tls_key")  # fmt: skip
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the current batch, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` prints every thread's stack (stuck sink?)
    signal.signal(signal.SIGINT, on_signal)
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=s.api_host)
    sink = Sink(s, SinkOptions(group=args.group, max_rows=args.max_rows, max_seconds=args.max_seconds), stop)
    if not sink.open_warehouse():
        return 0
    api = wh = alerts = None
    if sink.embedded and not args.no_api:
        wh = Warehouse(s)
        api = ApiServer(s, wh)
        api.start()
        signal.signal(signal.SIGHUP, lambda _n, _f: api.reload_readers())  # as the bridge: SIGHUP re-reads tokens
    if sink.embedded and s.query_alerts:  # this process owns the warehouse: it evaluates the query alerts
        from pipeline.searches.alerts import Evaluator

        wh = wh or Warehouse(s, max_workers=1)
        alerts = Evaluator(s, wh)
        alerts.start()
    tune_gc()  # after startup: what it built is frozen out of every collection
    try:
        return sink.run()
    finally:
        if alerts:
            alerts.stop()
        if api:
            api.stop()
        if wh:
            wh.close()
