"""Secrets in tokens files: a plain token or its hash ``sha256:<64 hex>``, so a copied file gives no one access.

Both files (the bridge's writers, the API's readers) keep only SHA-256 digests in memory; ``kaudit token hash``
prints the hash of a token to put in a file instead of the token itself."""

from __future__ import annotations

import hashlib
import re

HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


class SecretFormatError(ValueError):
    """A ``sha256:`` entry that is not 64 hex digits."""


def token_digest(token: str) -> bytes:
    """SHA-256 of the token's bytes as sent: aiohttp reads header bytes that are not UTF-8 as surrogate escapes,
    which plain encode() refused (a 500 instead of a 401 for such a bearer token)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def hash_token(token: str) -> str:
    """The entry to write in a tokens file instead of ``token``."""
    return HASH_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def secret_digest(entry: str) -> bytes:
    """The digest a tokens-file entry stands for: ``sha256:<hex>`` is a digest already, anything else a token.
    (A plain token may therefore not itself start with ``sha256:``.)"""
    if entry.startswith(HASH_PREFIX):
        hexpart = entry[len(HASH_PREFIX) :]
        if not _HEX64.match(hexpart):
            raise SecretFormatError("a 'sha256:' entry must be followed by 64 hex digits (kaudit token hash)")
        return bytes.fromhex(hexpart)
    return token_digest(entry)
