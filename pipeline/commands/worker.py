"""kaudit worker: the stream processor (faust) between the raw topic and the events/stats/alerts topics."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

HELP = "stream worker: parse, deduplicate, window and flag raw audit records (faust)"
DESCRIPTION = """\
Consumes k8s-audit-raw (one record = one webhook batch or a chunk of log lines) and writes, per raw record:
  k8s-audit-events        the deduplicated normalized events (Avro EventBatch, same partition number)
  k8s-audit-verb-stats    per-window counts per (cluster, verb)   (Avro, this record's contribution)
  k8s-audit-status-stats  per-window counts per (cluster, code)   (Avro, this record's contribution)
  k8s-audit-alerts(-json) alerts of the rules (default set + --rules), deduplicated by deterministic alert_id
  k8s-audit-deadletter    what could not be parsed, with the reason and the original bytes

Dedup on (cluster, auditID, stage) for --horizon seconds; the state is rebuilt from k8s-audit-events after a
restart or rebalance, so a replay re-emits identical outputs and aggregates stay exact. Several workers with
the same KAUDIT_TOPIC_PREFIX share the partitions (one consumer group). SIGTERM stops cleanly.
Liveness: KAUDIT_VAR/worker-<id>.alive (JSON; mtime = last processed record group).
Metrics: --metrics-port N (KAUDIT_WORKER_METRICS_PORT) serves /metrics (lag per partition, records, events,
alerts, dead letters, group processing time, dedup keys and memory, rebuild time) and /healthz.

  kaudit worker                                  # settings from KAUDIT_* variables
  kaudit worker --rules my-rules.yaml --check    # validate rules (and run their examples), then exit
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.commands._common import add_kafka_flag

    add_kafka_flag(p)
    p.add_argument("--partitions", type=int, help="raw/events/stats partitions (KAUDIT_RAW_PARTITIONS, default 4)")
    p.add_argument("--window", type=int, metavar="SECONDS", help="tumbling window size (KAUDIT_WINDOW_SECONDS, default 60)")
    p.add_argument(
        "--count-stages",
        metavar="STAGES",
        help="comma-separated stages counted in the aggregates, empty = all (KAUDIT_COUNT_STAGES)",
    )
    p.add_argument("--rules", metavar="FILE", help="extra alert rules YAML, added to the default set (KAUDIT_RULES_FILE)")
    p.add_argument("--filter", metavar="FILE", help="noise filter YAML: drop/sample events before storage (KAUDIT_FILTER_FILE)")
    p.add_argument(
        "--horizon", type=int, metavar="SECONDS", help="dedup memory in wall-clock seconds (KAUDIT_DEDUP_HORIZON_SECONDS, default 900)"
    )
    p.add_argument("--id", default=None, help="worker id for the liveness file and logs (default HOSTNAME-PID)")
    p.add_argument("--take", type=int, default=32, help="raw records processed per group before offsets are acknowledged (default 32)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz on this port (KAUDIT_WORKER_METRICS_PORT; 0 = off)")
    p.add_argument("--check", action="store_true", help="load rules and filter, run every rule example, print a summary and exit")


def check_rules(rules: list) -> list[str]:
    """Run each rule's inline examples; return failures as text."""
    import dataclasses

    import orjson

    from pipeline.agents.processor import Processor
    from pipeline.agents.rules import RuleSet, example_event
    from pipeline.agents.state import PartitionState
    from pipeline.config import Settings

    failures = []
    for rule in rules:
        r = dataclasses.replace(rule, enabled=True)
        proc = Processor(Settings(), RuleSet([r]))
        for kind in ("fire", "quiet"):
            for i, ex in enumerate(rule.examples.get(kind, [])):
                events = [example_event(ex, k) for k in range(max(r.threshold, 1))]
                body = orjson.dumps({"kind": "EventList", "items": events})
                out = proc.process(PartitionState(0, 900), 0, b"check", body, [])
                n = sum(1 for a in out.alerts if a.record["rule_id"] == r.id)
                if out.n_bad or n != (1 if kind == "fire" else 0):
                    failures.append(f"rule '{r.id}': {kind} example #{i + 1} gave {n} alert(s) ({out.n_bad} bad event(s))")
    return failures


def run(args: argparse.Namespace) -> int:
    from pipeline.agents.filters import FilterError, load_filter
    from pipeline.agents.rules import RuleError, RuleSet, load_rules
    from pipeline.commands._common import settings_from

    s = settings_from(
        args,
        kafka_bootstrap="kafka",
        raw_partitions="partitions",
        window_seconds="window",
        count_stages="count_stages",
        rules_file="rules",
        filter_file="filter",
        dedup_horizon_seconds="horizon",
        worker_metrics_port="metrics_port",
    )
    log = logging.getLogger("kaudit.worker")
    try:
        rules = load_rules(s.rules_file)
        noise = load_filter(s.filter_file)
    except (RuleError, FilterError) as exc:
        print(f"kaudit worker: {exc}", file=sys.stderr)
        return 2
    enabled = [r for r in rules if r.enabled]
    if args.check:
        failures = check_rules(rules)
        for f in failures:
            print(f"kaudit worker: {f}", file=sys.stderr)
        print(
            f"{len(enabled)} rules enabled ({len(rules) - len(enabled)} off), "
            f"{len(noise.filters) if noise else 0} noise filters; examples: {'all pass' if not failures else f'{len(failures)} failed'}"
        )
        return 1 if failures else 0
    if s.window_seconds < 1 or s.raw_partitions < 1 or s.dedup_horizon_seconds < 1:
        print("kaudit worker: --window, --partitions and --horizon must be positive", file=sys.stderr)
        return 2

    from pipeline.agents.app import Worker
    from pipeline.kafka.topics import ensure_topics

    try:
        ensure_topics(s, timeout=15)
    except Exception as exc:  # noqa: BLE001
        print(f"kaudit worker: cannot reach Kafka at {s.kafka_bootstrap} to check topics: {exc}", file=sys.stderr)
        return 1
    worker_id = args.id or f"{socket.gethostname()}-{os.getpid()}"
    log.info(
        "worker %s: kafka %s, topics prefix %r, %d partitions, window %ds, stages %s, horizon %ds, %d rules%s%s",
        worker_id, s.kafka_bootstrap, s.topic_prefix, s.raw_partitions, s.window_seconds, s.count_stages or "all",
        s.dedup_horizon_seconds, len(enabled), f" (+{s.rules_file})" if s.rules_file else "",
        f", filter {s.filter_file} ({len(noise.filters)} entries)" if noise else "",
    )  # fmt: skip
    return Worker(s, RuleSet(rules), noise, worker_id=worker_id, take=args.take).run()
