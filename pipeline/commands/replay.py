"""kaudit replay: send audit files to a bridge like the kube-apiserver webhook backend does."""

from __future__ import annotations

import argparse
import sys

HELP = "send audit files to a bridge as kube-apiserver webhook batches (tests, demos, benchmarks)"
DESCRIPTION = """\
Reads audit files of any shape (JSON lines, pretty-printed, EventList, AKS, EKS, .gz) and POSTs them to a bridge
exactly as the kube-apiserver batch webhook backend does: EventList bodies of up to 400 events whose items carry no
kind/apiVersion, Content-Type application/json, a bearer token, a 30 s timeout, any 2xx = success; every other
answer is retried with backoff (10 s x1.5, jitter 0.2, 5 attempts; 429/5xx with Retry-After are re-sent up to 10
times per attempt), then the batch is dropped. Several batches are in flight at once.

Prints a summary (events, batches, failed attempts, dropped batches). Exit 1 if any batch was dropped
(lines that are not audit events are reported on stderr and not sent)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="audit files")
    p.add_argument("--url", required=True, help="bridge endpoint, e.g. http://127.0.0.1:8765/audit/prod")
    p.add_argument("--cluster", help="cluster name: appended to --url when it ends with /audit or /audit/")
    p.add_argument("--token", help="bearer token (default: env KAUDIT_REPLAY_TOKEN)")
    p.add_argument("--rate", type=float, default=0.0, metavar="EVENTS_PER_S", help="pace to this many events/s")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="batches in flight (4)")
    p.add_argument("--batch-size", type=int, default=400, metavar="N", help="events per batch (400, the apiserver's)")
    p.add_argument("--initial-backoff", type=float, default=10.0, metavar="S", help="first retry wait (10 s)")
    p.add_argument("--attempts", type=int, default=5, metavar="N", help="attempts per batch (5)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="per-request timeout (30 s)")
    p.add_argument("--ca", metavar="PEM", help="CA of the bridge's TLS certificate")
    p.add_argument("--cert", metavar="PEM", help="client certificate (mTLS)")
    p.add_argument("--key", metavar="PEM", help="client key (mTLS)")
    p.add_argument("--insecure", action="store_true", help="do not verify the bridge's TLS certificate")


def run(args: argparse.Namespace) -> int:
    import os
    import ssl

    from pipeline.ingest.replay import RetryPolicy, main_replay

    url = args.url
    if args.cluster and url.rstrip("/").endswith("/audit"):
        url = url.rstrip("/") + "/" + args.cluster
    ctx = None
    if url.startswith("https://"):
        ctx = ssl.create_default_context(cafile=args.ca)
        if args.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if args.cert:
            ctx.load_cert_chain(args.cert, args.key)
    policy = RetryPolicy(initial_backoff=args.initial_backoff, attempts=args.attempts, timeout=args.timeout)
    missing = [f for f in args.files if not os.path.isfile(f)]
    if missing:
        print(f"kaudit replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    stats, _issues = main_replay(
        url, args.files, token=args.token or os.environ.get("KAUDIT_REPLAY_TOKEN"), concurrency=args.concurrency,
        rate=args.rate, policy=policy, batch_size=args.batch_size, ssl=ctx,
    )  # fmt: skip
    print(stats.summary())
    return 1 if stats.dropped_batches else 0
