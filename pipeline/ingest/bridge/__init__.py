"""Webhook bridge: ``POST /audit/{cluster}`` -> Kafka ``k8s-audit-raw`` (see ``server.py``)."""

from pipeline.ingest.bridge.auth import Authenticator, TokensFileError, is_loopback
from pipeline.ingest.bridge.server import (
    Bridge,
    BridgeOptions,
    classify,
    make_ssl_context,
    serve,
    validate_item,
)

__all__ = [
    "Authenticator", "Bridge", "BridgeOptions", "TokensFileError", "classify", "is_loopback", "make_ssl_context",
    "serve", "validate_item",
]  # fmt: skip
