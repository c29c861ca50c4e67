"""kaudit bridge: the audit webhook receiver (kube-apiserver -> Kafka)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

HELP = "receive kube-apiserver audit webhooks and write them to Kafka (k8s-audit-raw)"
DESCRIPTION = """\
Receives audit webhook batches from kube-apiservers at POST /audit/<cluster> and writes each batch, exactly as
received (gzip decoded), as one record to the Kafka topic k8s-audit-raw. It answers 200 only after Kafka
acknowledged the batch (acks=all); if Kafka cannot within --ack-timeout it answers 503 + Retry-After and the
apiserver resends. Invalid items of a valid EventList go to k8s-audit-deadletter, the rest is accepted.

Authentication (at least one, or --no-auth on a loopback address):
  --tokens-file FILE   YAML: `clusters: {prod: TOKEN | [TOKENS]}` and/or `tokens: {TOKEN: [clusters] | "*"}`;
                       a TOKEN may be written as its hash sha256:<hex> (`kaudit token hash`), so a
                       copy of the file gives no one write access; re-read when it changes and on SIGHUP
  --client-ca FILE     mTLS: client certificates signed by this CA may write the clusters named by their
                       CN, their DNS SANs and O=kaudit:cluster:<name> (O=kaudit:all-clusters: any)

Also: GET /healthz, /readyz (200 while Kafka answers), /metrics (Prometheus).
Setup for a cluster (audit policy, webhook kubeconfig, apiserver flags, manifests): infra/kubernetes/README.md"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.commands._common import add_kafka_flag
    from pipeline.config import Settings

    d = Settings()
    p.add_argument("--host", help=f"listen address (KAUDIT_BRIDGE_HOST, default {d.bridge_host})")
    p.add_argument("--port", type=int, help=f"listen port (KAUDIT_BRIDGE_PORT, default {d.bridge_port})")
    add_kafka_flag(p)
    p.add_argument("--tokens-file", type=Path, help="bearer tokens per cluster (KAUDIT_BRIDGE_TOKENS_FILE)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (chain) for HTTPS")
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--client-ca", metavar="PEM", help="CA that signs client certificates (enables mTLS)")
    p.add_argument("--no-auth", action="store_true", help="accept every caller (demos; only on 127.0.0.1/::1)")
    p.add_argument(
        "--max-body", type=int, metavar="BYTES",
        help=f"largest decompressed body (KAUDIT_BRIDGE_MAX_BODY_BYTES, default {d.bridge_max_body_bytes})",
    )  # fmt: skip
    p.add_argument(
        "--ack-timeout", type=float, metavar="SECONDS",
        help=f"wait this long for Kafka acks before answering 503 (KAUDIT_BRIDGE_ACK_TIMEOUT, default {d.bridge_ack_timeout:g})",
    )  # fmt: skip
    p.add_argument("--retry-after", type=int, default=5, metavar="SECONDS", help="Retry-After of 503 answers (5)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from pipeline.commands._common import settings_from
    from pipeline.ingest.bridge import (
        Authenticator,
        Bridge,
        BridgeOptions,
        TokensFileError,
        is_loopback,
        make_ssl_context,
        serve,
    )  # fmt: skip

    log = logging.getLogger("kaudit.bridge")
    s = settings_from(
        args, bridge_host="host", bridge_port="port", kafka_bootstrap="kafka", bridge_tokens_file="tokens_file",
        bridge_max_body_bytes="max_body", bridge_ack_timeout="ack_timeout",
    )  # fmt: skip
    if args.no_auth:
        if s.bridge_tokens_file or args.client_ca:
            print("kaudit bridge: --no-auth cannot be combined with --tokens-file/--client-ca", file=sys.stderr)
            return 2
        if not is_loopback(s.bridge_host):
            print(
                f"kaudit bridge: --no-auth refused on {s.bridge_host}: it is only allowed on a loopback address "
                "(127.0.0.1, ::1); use --tokens-file or --client-ca",
                file=sys.stderr,
            )
            return 2
    elif not s.bridge_tokens_file and not args.client_ca:
        print(
            "kaudit bridge: no authentication configured: give --tokens-file (KAUDIT_BRIDGE_TOKENS_FILE) and/or "
            "--client-ca, or --no-auth on 127.0.0.1 for a demo",
            file=sys.stderr,
        )
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("kaudit bridge: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        ssl_ctx = make_ssl_context(args.tls_cert, args.tls_key, args.client_ca)
    except (OSError, ValueError) as exc:
        print(f"kaudit bridge: TLS setup failed: {exc}", file=sys.stderr)
        return 2
    auth = Authenticator(tokens_file=s.bridge_tokens_file, mtls=bool(args.client_ca), enabled=not args.no_auth)
    try:
        auth.load()
    except TokensFileError as exc:
        print(f"kaudit bridge: {exc}", file=sys.stderr)
        return 2
    bridge = Bridge(s, auth, BridgeOptions(retry_after=args.retry_after))
    log.info("starting bridge (max body %d bytes, ack timeout %g s)", s.bridge_max_body_bytes, s.bridge_ack_timeout)
    try:
        asyncio.run(serve(bridge, s.bridge_host, s.bridge_port, ssl_ctx))
    except OSError as exc:
        print(f"kaudit bridge: cannot listen on {s.bridge_host}:{s.bridge_port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
