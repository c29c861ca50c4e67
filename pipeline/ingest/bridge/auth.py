"""Who may write which cluster: bearer tokens from a tokens file and/or client certificates (mTLS).

Tokens file (YAML or JSON), either shape (both may appear in one file)::

    clusters:                 # cluster -> token or list of tokens
      prod-eu: s3cr3t
      prod-us: [tokA, tokB]   # several tokens = rotation without downtime
    tokens:                   # token -> cluster or list of clusters ("*" = any cluster)
      fleet-token: [prod-eu, prod-us]
      admin-token: "*"

A token may be written as its hash, ``sha256:<64 hex>`` (``kaudit token hash`` prints it), so a copy of the file
gives no one write access. The file is re-read when its mtime changes (checked every second off the event loop)
and on SIGHUP (``pipeline.access.watch``); a file that fails to parse keeps the previous tokens (and says so in
the log). Tokens are kept only as SHA-256 digests and looked up by digest, so the comparison time does not
depend on how many leading characters match.

Client certificates (verified against ``--client-ca``) name the clusters they may write:
- the subject CN (``CN=prod-eu``) and every DNS subjectAltName are cluster names;
- an organisation ``O=kaudit:cluster:<name>`` adds a cluster, ``O=kaudit:all-clusters`` allows any cluster.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from pipeline.access.tokens import SecretFormatError, secret_digest, token_digest
from pipeline.access.watch import WatchedFile

log = logging.getLogger("kaudit.bridge.auth")

ANY = "*"
CLUSTER_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
O_CLUSTER = "kaudit:cluster:"
O_ALL = "kaudit:all-clusters"


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message says where and why."""


_digest = token_digest


def _as_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TokensFileError(f"{where}: expected a string or a list of strings, got {type(value).__name__}")


def parse_tokens(data: bytes, source: str = "tokens file") -> dict[bytes, frozenset[str]]:
    """token digest -> allowed clusters (``*`` = any)."""
    try:
        doc = orjson.loads(data) if data.lstrip()[:1] == b"{" else yaml.safe_load(data)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise TokensFileError(f"{source}: not valid YAML/JSON: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or not set(doc) <= {"clusters", "tokens"}:
        raise TokensFileError(f"{source}: expected a mapping with 'clusters:' and/or 'tokens:'")
    table: dict[bytes, set[str]] = {}

    def add(token: str, cluster: str, where: str) -> None:
        if not token:
            raise TokensFileError(f"{where}: empty token")
        if cluster != ANY and not CLUSTER_RE.match(cluster):
            raise TokensFileError(f"{where}: {cluster!r} is not a valid cluster name")
        try:
            digest = secret_digest(token)  # a plain token, or its sha256:<hex>
        except SecretFormatError as exc:
            raise TokensFileError(f"{where}: {exc}") from None
        table.setdefault(digest, set()).add(cluster)

    for section in ("clusters", "tokens"):
        if not isinstance(doc.get(section) or {}, dict):
            raise TokensFileError(f"{source}: '{section}:' must be a mapping")
    for cluster, tokens in (doc.get("clusters") or {}).items():
        for tok in _as_list(tokens, f"{source}: clusters.{cluster}"):
            add(tok, str(cluster), f"{source}: clusters.{cluster}")
    for tok, clusters in (doc.get("tokens") or {}).items():
        for cluster in _as_list(clusters, f"{source}: tokens.<token>"):
            add(str(tok), cluster, f"{source}: tokens.<token>")
    return {k: frozenset(v) for k, v in table.items()}


def cert_clusters(peercert: dict[str, Any] | None) -> frozenset[str]:
    """Clusters a verified client certificate may write (see module docstring)."""
    if not peercert:
        return frozenset()
    out: set[str] = set()
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                out.add(value)
            elif key == "organizationName":
                if value == O_ALL:
                    out.add(ANY)
                elif value.startswith(O_CLUSTER):
                    out.add(value[len(O_CLUSTER) :])
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            out.add(value)
    return frozenset(out)


@dataclass
class Decision:
    status: int  # 0 = allowed, else 401 / 403
    reason: str = ""
    principal: str = ""


@dataclass
class Authenticator(WatchedFile):
    """Holds the token table; ``check`` decides a request. ``enabled=False`` means --no-auth. Loading, reloading
    on change and SIGHUP come from ``WatchedFile`` (``load``, ``reload``, ``start``, ``stop``)."""

    tokens_file: Path | None = None
    mtls: bool = False
    enabled: bool = True
    _table: dict[bytes, frozenset[str]] = field(default_factory=dict)
    _mtime: float | None = None
    _task: asyncio.Task | None = None
    watched_what = "tokens"

    @property
    def watched_path(self) -> Path | None:
        return self.tokens_file

    def file_error(self, message: str) -> ValueError:
        return TokensFileError(message)

    def apply_file(self, data: bytes, source: str) -> None:
        self._table = parse_tokens(data, source)
        log.info("tokens: %d token(s) loaded from %s", len(self._table), source)

    def check(self, cluster: str, authorization: str | None, peercert: dict[str, Any] | None) -> Decision:
        if not self.enabled:
            return Decision(0, principal="anonymous(--no-auth)")
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return Decision(401, "unsupported Authorization scheme (use Bearer)")
            allowed = self._table.get(_digest(token))
            if allowed is None:
                return Decision(401, "unknown bearer token")
            if cluster in allowed or ANY in allowed:
                return Decision(0, principal="token")
            return Decision(403, f"this token may not write cluster {cluster!r}")
        if peercert:
            allowed = cert_clusters(peercert)
            if cluster in allowed or ANY in allowed:
                return Decision(0, principal="cert")
            return Decision(403, f"this client certificate may not write cluster {cluster!r}")
        return Decision(401, "no credentials (bearer token or client certificate)")


def is_loopback(host: str) -> bool:
    """--no-auth is only allowed on loopback binds."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
