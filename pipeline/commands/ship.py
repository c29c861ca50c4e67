"""kaudit ship: follow (or import) audit log files into Kafka."""

from __future__ import annotations

import argparse
import logging
import os
import sys

HELP = "follow audit log files (or import them with --once) into Kafka (k8s-audit-raw)"
DESCRIPTION = """\
Follows audit log files written by the kube-apiserver log backend (like tail -F: rotation by rename+create and by
copytruncate, several files, lines split across writes) and writes chunks of complete lines (<= 1 MiB or 5000
lines, byte-exact) to the Kafka topic k8s-audit-raw, keyed by --cluster. Lines that are not audit events go to
k8s-audit-deadletter with FILE:LINE.

The position per file is checkpointed under $KAUDIT_VAR/shipper/<cluster>/ only after Kafka acknowledged the lines
before it: after a crash or restart shipping resumes there (a file rotated meanwhile is finished first); at most
the last unacknowledged chunk is sent twice (same batch id; the worker deduplicates events anyway).

--once imports the files to their end and exits (backfill; .gz files too), printing progress every 2 s.
--format names the line shape: k8s (log backend JSON lines, default), aks (Event Hub / diagnostic records),
eks (CloudWatch export), gke (Cloud Logging entries with an AuditLog protoPayload, as a Log Router sink
exports them to files or Pub/Sub; the entry's resource.labels.cluster_name names the cluster; stage and level
are not in GKE entries: see pipeline/models/gke.py)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.commands._common import add_kafka_flag

    p.add_argument("paths", nargs="+", metavar="PATH", help="audit log files")
    p.add_argument("--cluster", required=True, help="cluster name the events belong to")
    p.add_argument("--format", choices=("k8s", "aks", "eks", "gke"), default="k8s", help="line shape (default k8s)")
    p.add_argument("--once", action="store_true", help="import to the end of each file and exit (backfill)")
    p.add_argument("--from-start", action="store_true", help="ignore checkpoints: ship the files from byte 0")
    add_kafka_flag(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.commands._common import settings_from
    from pipeline.ingest.bridge.auth import CLUSTER_RE
    from pipeline.ingest.shipper import ShipError, Shipper

    log = logging.getLogger("kaudit.ship")
    if not CLUSTER_RE.match(args.cluster):
        print(f"kaudit ship: {args.cluster!r} is not a valid cluster name ([a-z0-9.-_], 1-63)", file=sys.stderr)
        return 2
    if args.once:
        missing = [p for p in args.paths if not os.path.isfile(p)]
        if missing:
            print(f"kaudit ship: no such file: {', '.join(missing)}", file=sys.stderr)
            return 2
    s = settings_from(args, kafka_bootstrap="kafka")
    shipper = Shipper(
        s, args.cluster, args.paths, fmt=args.format, once=args.once, from_start=args.from_start,
        progress=lambda line: log.info("%s", line),
    )  # fmt: skip
    shipper.install_signal_handlers()
    log.info(
        "shipping %d file(s) as cluster %r to %s (%s)%s", len(args.paths), args.cluster, s.kafka_bootstrap,
        shipper.raw_topic, ", --once" if args.once else ", following (Ctrl-C to stop)",
    )  # fmt: skip
    try:
        stats = shipper.run()
    except ShipError as exc:
        print(f"kaudit ship: {exc}", file=sys.stderr)
        return 1
    print(
        f"ship: {stats.lines} lines in {stats.records} records ({stats.bytes} bytes), "
        f"{stats.deadletter} to the dead-letter topic"
    )
    return 0
