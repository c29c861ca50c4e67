"""kaudit normalize: read audit files of any accepted shape and print normalized events as JSON lines."""

from __future__ import annotations

import argparse
import sys

import orjson

HELP = "print audit files of any shape as normalized events (JSON lines)"
DESCRIPTION = """Reads audit log files (JSON lines, pretty-printed, EventList, AKS Event Hub, EKS CloudWatch, .gz)
and prints one normalized event per line. Bad lines go to stderr as FILE:LINE: reason; the rest continue.
Exit status 0 if every event parsed, 1 otherwise."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="files to read ('-' = stdin)")
    p.add_argument("--cluster", default="default", help="cluster name to stamp on each event (default: default)")
    p.add_argument("--iso", action="store_true", help="print timestamps as RFC 3339 text instead of µs integers")


def run(args: argparse.Namespace) -> int:
    from pipeline.config import get_settings
    from pipeline.models.normalize import NormalizeError, normalize_event
    from pipeline.models.readers import ParseIssue, read_events
    from pipeline.models.timestamps import format_ts_us

    s = get_settings()
    out = sys.stdout.buffer
    bad = 0
    for path in args.paths:
        try:
            data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()
        except OSError as exc:
            print(f"{path}: {exc.strerror}", file=sys.stderr)
            bad += 1
            continue
        for item in read_events(data):
            if isinstance(item, ParseIssue):
                print(f"{path}:{item.line}: {item.reason}", file=sys.stderr)
                bad += 1
                continue
            try:
                rec = normalize_event(
                    item.event, args.cluster, max_object_bytes=s.max_object_bytes, redact=s.redact_secrets
                )
            except NormalizeError as exc:
                print(f"{path}:{item.line}: {exc}", file=sys.stderr)
                bad += 1
                continue
            if args.iso:
                rec["request_received_ts"] = format_ts_us(rec["request_received_ts"])
                rec["stage_ts"] = format_ts_us(rec["stage_ts"])
            out.write(orjson.dumps(rec) + b"\n")
    out.flush()
    return 1 if bad else 0
