"""Caller lists: named sets of networks (known-bad IPs, Tor exits, the cluster's own networks) read from
user-maintained files that a rules file names in its ``lists:`` section. Nothing is downloaded at run time:
the files are part of the rules, so the worker's outputs stay a function of the input and the rules.

File format: one IP address or CIDR per line (IPv4 or IPv6), ``#`` starts a comment, blank lines ignored.
Lookups are a binary search over merged address intervals, so a 100k-line list costs the same per event as a
10-line one; source IPs repeat, so each distinct text is parsed once (bounded memo).
"""

from __future__ import annotations

import bisect
import ipaddress
from pathlib import Path
from typing import Any


class ListError(ValueError):
    """A list file that cannot be used; the message names the file and line."""


class CidrList:
    """Networks as sorted, merged [start, end] integer intervals per IP version."""

    __slots__ = ("name", "path", "n_entries", "_starts", "_ends", "_memo")

    def __init__(self, name: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], path: str = "") -> None:
        self.name = name
        self.path = path
        self.n_entries = len(networks)
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        for version in (4, 6):
            spans = sorted(
                (int(n.network_address), int(n.broadcast_address)) for n in networks if n.version == version
            )
            for lo, hi in spans:
                ends = self._ends[version]
                if ends and lo <= ends[-1] + 1:
                    ends[-1] = max(ends[-1], hi)
                else:
                    self._starts[version].append(lo)
                    ends.append(hi)
        self._memo: dict[str, bool] = {}

    def __len__(self) -> int:
        return self.n_entries

    def contains(self, value: Any) -> bool:
        """True if ``value`` (an IP address as text) lies in one of the networks; anything else is False."""
        text = value if isinstance(value, str) else str(value)
        hit = self._memo.get(text)
        if hit is not None:
            return hit
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            hit = False
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # ::ffff:1.2.3.4 is the IPv4 caller
            n = int(ip)
            starts = self._starts[ip.version]
            i = bisect.bisect_right(starts, n) - 1
            hit = i >= 0 and n <= self._ends[ip.version][i]
        if len(self._memo) >= 65536:
            self._memo.clear()
        self._memo[text] = hit
        return hit


def parse_list(name: str, text: str, where: str = "") -> CidrList:
    nets = []
    for lineno, line in enumerate(text.splitlines(), 1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ListError(f"list '{name}' ({where}:{lineno}): not an IP address or CIDR: {entry[:80]!r}") from None
    return CidrList(name, nets, where)


def load_list(name: str, path: Path | str) -> CidrList:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ListError(f"list '{name}': cannot read {path}: {exc.strerror or exc}") from None
    return parse_list(name, text, str(path))
