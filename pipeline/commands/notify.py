"""kaudit notify: deliver alerts from the alerts topic to Alertmanager, Slack-compatible and generic webhooks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

HELP = "deliver alerts to Alertmanager, Slack-compatible and generic webhooks (routing YAML)"
DESCRIPTION = """\
Consumes k8s-audit-alerts (Avro) in one consumer group and delivers each alert to the destinations its routes
pick (by rule, severity, cluster, user, labels): Prometheus Alertmanager (POST /api/v2/alerts: labels
alertname/rule_id/severity/cluster/user/alert_id..., who/what/where annotations, a dashboard link, endsAt for
windowed alerts), Slack-compatible incoming webhooks, and generic JSON webhooks (optionally signed:
X-Kaudit-Signature = sha256=HMAC-SHA256(key, "<X-Kaudit-Timestamp>.<body>")).

Per destination: grouping (group_by, group_max, group_wait_seconds), a rate limit (rate_per_second, burst),
retries with exponential backoff (Retry-After honoured). A destination that is down only delays itself.
Offsets are committed once every destination delivered an alert or a dead-letter record (k8s-audit-deadletter,
stage notify) says why not (rejected with 4xx, give_up_seconds of retries, max_pending backlog overflow while
the destination fails; a healthy destination's full backlog pauses reading instead).
Each alert id is delivered once per destination across restarts: delivery state per (destination, alert_id)
in KAUDIT_VAR/notify/<group>.sqlite. The routing file format: pipeline/notify/routing.py.

  kaudit notify --routing notify.yaml
  kaudit notify --routing notify.yaml --check          # validate the file, print routes, exit
  kaudit notify --routing notify.yaml --metrics-port 9466   # /metrics and /healthz
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.commands._common import add_kafka_flag

    add_kafka_flag(p)
    p.add_argument("--routing", metavar="FILE", help="destinations and routes YAML (KAUDIT_NOTIFY_ROUTING_FILE; required)")
    p.add_argument("--group", help="Kafka consumer group (KAUDIT_NOTIFY_GROUP, default kaudit-notify)")
    p.add_argument("--dashboard-url", help="dashboard base URL for links (KAUDIT_NOTIFY_DASHBOARD_URL)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz on this port (KAUDIT_NOTIFY_METRICS_PORT)")
    p.add_argument("--rules", metavar="FILE", help="the worker's extra rules (KAUDIT_RULES_FILE): threshold windows for endsAt")
    p.add_argument("--check", action="store_true", help="validate the routing file, print it, exit")


async def _serve_metrics(host: str, port: int, notifier) -> object:  # noqa: ANN001
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def metrics(_req: web.Request) -> web.Response:
        return web.Response(body=generate_latest(notifier.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(_req: web.Request) -> web.Response:
        return web.json_response({"ok": True, "uncommitted": notifier.uncommitted(),
                                  "pending": {n: len(lp.queue) + len(lp.inflight) for n, lp in notifier.loops.items()}})  # fmt: skip

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def run(args: argparse.Namespace) -> int:
    from pipeline.agents.rules import RuleError, load_rules
    from pipeline.commands._common import settings_from
    from pipeline.notify.routing import RoutingError, load

    s = settings_from(args, kafka_bootstrap="kafka", notify_routing_file="routing", notify_group="group",
                      notify_dashboard_url="dashboard_url", notify_metrics_port="metrics_port", rules_file="rules")  # fmt: skip
    if not s.notify_routing_file:
        print("kaudit notify: --routing FILE (or KAUDIT_NOTIFY_ROUTING_FILE) is required", file=sys.stderr)
        return 2
    try:
        routing = load(s.notify_routing_file)
        rules = load_rules(s.rules_file)
    except (RoutingError, RuleError) as exc:
        print(f"kaudit notify: {exc}", file=sys.stderr)
        return 2
    windows = {r.id: r.window_seconds or s.window_seconds for r in rules}
    if args.check:
        for d in routing.destinations.values():
            print(f"destination {d.name}: {d.type} {d.safe_url} (group_by {list(d.group_by)}, "
                  f"{d.rate_per_second}/s burst {d.burst}, give up after {d.give_up_seconds:.0f}s)")  # fmt: skip
        for i, r in enumerate(routing.routes):
            print(f"route {i}: {r.matcher} -> {list(r.to)}{' (stop)' if r.stop else ''}")
        print(f"default -> {list(routing.default)}")
        return 0

    from pipeline.notify.service import Notifier

    log = logging.getLogger("kaudit.notify")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        notifier = Notifier(s, routing, group=s.topic_prefix + s.notify_group, windows=windows)
        runner = None
        if s.notify_metrics_port:
            try:
                runner = await _serve_metrics(s.api_host, s.notify_metrics_port, notifier)
            except OSError as exc:
                raise SystemExit(f"kaudit notify: cannot serve metrics on {s.api_host}:{s.notify_metrics_port}: {exc}") from None
            log.info("metrics on http://%s:%d/metrics", s.api_host, s.notify_metrics_port)
        try:
            await notifier.run(stop)
        finally:
            if runner is not None:
                await runner.cleanup()

    asyncio.run(main())
    return 0
