"""Reader tokens of the query API and dashboard: each token names a reader, the clusters it may see and its
role. Readers file (YAML or JSON; ``KAUDIT_API_READERS_FILE``)::

    readers:
      team-a:
        tokens: [sha256:9f86d0...]   # or `token: ...`; plain tokens or their hashes (kaudit token hash)
        clusters: [prod-a, stage-a]  # or "*" (every cluster); none listed = sees nothing
      ops:
        token: sha256:2c26b4...
        clusters: "*"
        role: admin                  # reader (default) | admin: may also run raw SQL (POST /api/sql)

Re-read when it changes and on SIGHUP (a broken version keeps the previous readers). ``KAUDIT_API_TOKEN`` stays
a single admin token for compatibility. A token is found by its SHA-256 digest in a dict (one hash per request,
however many readers: a file of 1,000 readers costs no more per request than one), like the bridge's tokens: the
lookup's timing can tell at most something about the digest of the token sent, never the characters of a known
token (finding a token for a digest is a SHA-256 preimage).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from pipeline.access.tokens import SecretFormatError, secret_digest, token_digest
from pipeline.access.watch import WatchedFile

log = logging.getLogger("kaudit.access")

ANY = "*"
ROLES = ("reader", "admin")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")
CLUSTER_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")  # the bridge's cluster names


class ReadersFileError(ValueError):
    """The readers file cannot be used; the message says where and why (never the token)."""


@dataclass(frozen=True)
class Reader:
    """Who is asking: ``clusters`` is None for every cluster, else the (possibly empty) set it may see."""

    name: str
    role: str = "reader"
    clusters: frozenset[str] | None = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def all_clusters(self) -> bool:
        return self.clusters is None

    def allowed(self) -> list[str] | None:
        """The confinement every query gets: None = none, else exactly these clusters ([] = nothing)."""
        return None if self.clusters is None else sorted(self.clusters)

    def visible(self, requested: Iterable[str]) -> list[str] | None:
        """What a request for ``requested`` clusters (empty = all) may show: the intersection, never more."""
        req = [c for c in requested if c]
        if self.clusters is None:
            return req or None
        return sorted(self.clusters.intersection(req)) if req else sorted(self.clusters)

    def describe_clusters(self) -> str | list[str]:
        return ANY if self.clusters is None else sorted(self.clusters)


ANONYMOUS = Reader("anonymous", "admin", None)  # no authentication configured (loopback only)
LEGACY_ADMIN = Reader("api-token", "admin", None)  # KAUDIT_API_TOKEN


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ReadersFileError(f"{where}: expected a string or a list of strings, got {type(value).__name__}")


def parse_readers(data: bytes, source: str = "readers file") -> list[tuple[bytes, Reader]]:
    """(token digest, reader) pairs; raises ReadersFileError saying what is wrong."""
    try:
        doc = orjson.loads(data) if data.lstrip()[:1] == b"{" else yaml.safe_load(data)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ReadersFileError(f"{source}: not valid YAML/JSON: {exc}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or not set(doc) <= {"readers"} or not isinstance(doc.get("readers") or {}, dict):
        raise ReadersFileError(f"{source}: expected a mapping 'readers:' of reader name -> token(s), clusters, role")
    out: list[tuple[bytes, Reader]] = []
    seen: dict[bytes, str] = {}
    for name, spec in (doc.get("readers") or {}).items():
        where = f"{source}: readers.{name}"
        name = str(name)
        if not NAME_RE.match(name):
            raise ReadersFileError(f"{where}: reader names are 1-64 letters, digits and ._@:-")
        if not isinstance(spec, dict) or not set(spec) <= {"token", "tokens", "clusters", "role"}:
            raise ReadersFileError(f"{where}: expected a mapping with token/tokens, clusters and role")
        secrets = _strings(spec.get("token", []), f"{where}.token") + _strings(spec.get("tokens", []), f"{where}.tokens")
        if not secrets:
            raise ReadersFileError(f"{where}: no token")
        role = spec.get("role", "reader")
        if role not in ROLES:
            raise ReadersFileError(f"{where}.role: {role!r} is not one of {', '.join(ROLES)}")
        raw = spec.get("clusters")
        clusters: frozenset[str] | None
        if raw is None:
            clusters = frozenset()  # no clusters: sees nothing
        else:
            names = _strings(raw, f"{where}.clusters")
            bad = [c for c in names if c != ANY and not CLUSTER_RE.match(c)]
            if bad:
                raise ReadersFileError(f"{where}.clusters: {bad[0]!r} is not a valid cluster name")
            clusters = None if ANY in names else frozenset(names)
        reader = Reader(name, role, clusters)
        for s in secrets:
            if not s:
                raise ReadersFileError(f"{where}: empty token")
            try:
                d = secret_digest(s)
            except SecretFormatError as exc:
                raise ReadersFileError(f"{where}: {exc}") from None
            if d in seen and seen[d] != name:
                raise ReadersFileError(f"{where}: the same token is also reader {seen[d]!r}")
            seen[d] = name
            out.append((d, reader))
    return out


class Readers(WatchedFile):
    """The token table: from the readers file (watched) plus the legacy admin token. With neither, access is
    open (every caller is ``anonymous``, an admin: only sensible on loopback, which ``kaudit serve`` enforces)."""

    watched_what = "readers file"

    def __init__(self, path: Path | None = None, admin_token: str = "") -> None:
        self.path = Path(path) if path else None
        self.admin_token = admin_token
        self._entries: list[tuple[bytes, Reader]] = []
        self._legacy = [(token_digest(admin_token), LEGACY_ADMIN)] if admin_token else []
        self._by_digest: dict[bytes, Reader] = dict(self._legacy)

    @property
    def watched_path(self) -> Path | None:
        return self.path

    def file_error(self, message: str) -> ValueError:
        return ReadersFileError(message)

    def apply_file(self, data: bytes, source: str) -> None:
        entries = parse_readers(data, source)
        by_digest = dict(self._legacy)  # the readers file wins over KAUDIT_API_TOKEN for the same token
        by_digest.update(entries)
        self._entries, self._by_digest = entries, by_digest  # one swap: a request sees the old or the new table
        log.info("readers: %d reader(s), %d token(s) loaded from %s",
                 len({r.name for _, r in entries}), len(entries), source)  # fmt: skip

    @property
    def open(self) -> bool:
        return self.path is None and not self.admin_token

    def names(self) -> set[str]:
        return {r.name for _, r in self._entries + self._legacy}

    def authenticate(self, token: str) -> Reader | None:
        """The reader of ``token`` or None (one SHA-256 and one dict lookup)."""
        if not token:
            return None
        return self._by_digest.get(token_digest(token))
