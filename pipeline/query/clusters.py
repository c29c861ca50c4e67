"""The clusters file: cluster name -> group and labels, so that the product's source operators work on kaudit's
sources (``monitor_name`` = cluster, ``monitor_group`` = its group, ``tags`` = its labels as ``key=value``).

    clusters:
      prod-eu:  {group: production, labels: {env: prod, team: payments}}
      prod-us:  {group: production, labels: {env: prod}}
      staging:  {group: staging, labels: {env: staging}}

Set ``KAUDIT_CLUSTERS_FILE``; the file is read again when it changes. A cluster missing from the file has no
group and no labels (``monitor_group is empty`` finds it).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,252}$")


class ClustersFileError(ValueError):
    pass


@dataclass(frozen=True)
class ClusterInfo:
    name: str
    group: str = ""
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def tags(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.labels]


@dataclass
class ClusterMap:
    clusters: dict[str, ClusterInfo] = field(default_factory=dict)
    path: Path | None = None

    @property
    def groups(self) -> list[str]:
        return sorted({c.group for c in self.clusters.values() if c.group})

    def as_json(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "group": c.group, "labels": dict(c.labels)} for c in self.clusters.values()]


def parse(data: Any, where: str = "clusters file") -> ClusterMap:
    """A clusters document (``{clusters: {name: {group, labels}}}``) -> ClusterMap; raises ClustersFileError."""
    if data is None:
        return ClusterMap()
    if not isinstance(data, dict) or not isinstance(data.get("clusters", {}), dict):
        raise ClustersFileError(f"{where}: expected a mapping with a 'clusters' mapping (name -> group, labels)")
    out: dict[str, ClusterInfo] = {}
    for name, spec in (data.get("clusters") or {}).items():
        name = str(name)
        if not NAME_RE.match(name):
            raise ClustersFileError(f"{where}: {name!r} is not a cluster name")
        spec = spec or {}
        if isinstance(spec, str):  # `prod-eu: production` is a cluster and its group
            spec = {"group": spec}
        if not isinstance(spec, dict):
            raise ClustersFileError(f"{where}: cluster {name}: expected group and labels, got {type(spec).__name__}")
        unknown = set(spec) - {"group", "labels"}
        if unknown:
            raise ClustersFileError(f"{where}: cluster {name}: unknown key(s) {', '.join(sorted(unknown))}")
        labels = spec.get("labels") or {}
        if isinstance(labels, list):  # [env=prod, team=payments]
            labels = dict(str(x).split("=", 1) if "=" in str(x) else (str(x), "") for x in labels)
        if not isinstance(labels, dict):
            raise ClustersFileError(f"{where}: cluster {name}: labels must be a mapping (env: prod)")
        out[name] = ClusterInfo(name, str(spec.get("group") or ""),
                                tuple(sorted((str(k), "" if v is None else str(v)) for k, v in labels.items())))  # fmt: skip
    return ClusterMap(out)


_cache: dict[Path, tuple[float, int, ClusterMap]] = {}
_lock = threading.Lock()


def load(path: Path | str | None) -> ClusterMap:
    """The clusters file at ``path`` (cached until its mtime or size changes); an empty map when unset."""
    if not path:
        return ClusterMap()
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ClustersFileError(f"clusters file {p}: {exc.strerror or exc}") from None
    with _lock:
        hit = _cache.get(p)
        if hit and hit[0] == st.st_mtime and hit[1] == st.st_size:
            return hit[2]
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClustersFileError(f"clusters file {p}: {exc}") from None
    cm = parse(data, f"clusters file {p}")
    cm.path = p
    with _lock:
        _cache[p] = (st.st_mtime, st.st_size, cm)
    return cm


def for_settings(s: Any) -> ClusterMap:
    return load(getattr(s, "clusters_file", None))


# --- the cluster picker's search (GET /api/clusters and /api/dashboard/clusters: ?q=&limit=&group=) -----------
PICK_MAX = 10_000  # clusters a picker answer may list; a fleet beyond that is searched, not scrolled


class PickError(ValueError):
    """A picker parameter that is not usable (400)."""


@dataclass(frozen=True)
class Pick:
    """What the picker asks for: names containing ``q`` (case-insensitive), of ``group`` if set, at most
    ``limit`` of them (None = up to PICK_MAX). Applied after the reader's confinement, so it only narrows."""

    q: str = ""
    limit: int | None = None
    group: str | None = None

    @classmethod
    def from_query(cls, query: Any) -> Pick:
        q = str(query.get("q") or "").strip().lower()
        if len(q) > 253:
            raise PickError("q: at most 253 characters")
        raw = query.get("limit")
        limit = None
        if raw not in (None, ""):
            try:
                limit = int(raw)
            except ValueError:
                raise PickError(f"limit: {raw!r} is not a number") from None
            if not 1 <= limit <= PICK_MAX:
                raise PickError(f"limit: between 1 and {PICK_MAX}")
        group = query.get("group")
        return cls(q, limit, None if group is None else str(group))

    def matches(self, name: str, group: str = "") -> bool:
        return (not self.q or self.q in name.lower()) and (self.group is None or group == self.group)

    def cut(self, items: list[Any]) -> tuple[list[Any], int, bool]:
        """(the first ``limit`` items, how many matched, whether some were left out)."""
        n = len(items)
        keep = min(self.limit or PICK_MAX, PICK_MAX)
        return items[:keep], n, n > keep
