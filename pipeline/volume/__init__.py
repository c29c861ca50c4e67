"""Where the audit volume comes from: events, their JSON bytes and their ClickHouse cost per cluster, user, user
agent, verb, resource, namespace, level, stage, code and non-resource path, over time.

Everything reads the hourly rollup ``volume_1h`` (migration 7, kept by a materialized view at ingest), never
``audit_events``; ClickHouse's compressed cost comes from ``system.parts`` / ``system.columns`` and is
apportioned: the request/response object columns by each group's object bytes, every other column by its
events. The functions take ``run(sql, params) -> rows`` so the CLI, the dashboard and the policy suggester
share them; all SQL is parameterized.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Run = Callable[[str, dict[str, Any]], Sequence[Sequence[Any]]]

# --by names -> rollup columns
DIMENSIONS = {
    "cluster": "cluster",
    "user": "username",
    "useragent": "useragent",
    "verb": "verb",
    "resource": "objectref_resource",
    "apigroup": "objectref_apigroup",
    "subresource": "objectref_subresource",
    "namespace": "objectref_namespace",
    "level": "level",
    "stage": "stage",
    "code": "responsestatus_code",
    "path": "request_path",
}
ALIASES = {"username": "user", "agent": "useragent", "ua": "useragent", "ns": "namespace", "status": "code"}
READS = ("get", "list", "watch")
PROBES = ("/livez", "/readyz", "/healthz", "/version")
SINCE_RE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

# Where volume typically comes from (first match wins): the headline of `kaudit volume` and the dashboard.
CATEGORIES = [
    ("probes", "probe endpoints (/livez, /readyz, /healthz, /version)",
     "request_path != '' AND (request_path IN {probes:Array(String)} OR "
     "arrayExists(p -> startsWith(request_path, concat(p, '/')), {probes:Array(String)}))"),
    ("leases", "leases (leader election, node heartbeats)", "objectref_resource = 'leases'"),
    ("events", "Kubernetes Event objects", "objectref_resource = 'events'"),
    ("sa-reads", "service accounts' get/list/watch",
     "startsWith(username, 'system:serviceaccount:') AND verb IN {reads:Array(String)}"),
    ("node-reads", "nodes' get/list/watch", "startsWith(username, 'system:node:') AND verb IN {reads:Array(String)}"),
    ("control-plane-reads", "control plane components' get/list/watch",
     "(startsWith(username, 'system:kube-') OR username = 'system:apiserver') AND verb IN {reads:Array(String)}"),
    ("other-reads", "other users' get/list/watch", "verb IN {reads:Array(String)}"),
    ("writes", "writes (create, update, patch, delete, ...)", "verb != '' AND verb NOT IN {reads:Array(String)}"),
    ("other", "everything else (discovery, non-resource requests)", "1"),
]  # fmt: skip


class VolumeError(ValueError):
    """A request the volume report cannot answer (bad --since, unknown --by); the message says what works."""


def parse_since(text: str) -> int:
    """'7d' -> seconds (m, h, d, w)."""
    m = SINCE_RE.match(text or "")
    if not m or int(m.group(1)) <= 0:
        raise VolumeError(f"--since wants a duration like 30m, 24h, 7d or 2w, got {text!r}")
    return int(m.group(1)) * UNIT_S[m.group(2)]


def parse_time(text: str) -> int:
    """An ISO 8601 time ('2026-12-01T23:10:00Z', UTC when no offset) or epoch seconds -> epoch seconds."""
    from datetime import UTC, datetime

    t = (text or "").strip()
    if t.isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise VolumeError(f"--from/--to want an ISO time like 2026-12-01T23:10:00Z or epoch seconds, got {text!r}") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp())


def window_from_args(since: str, from_: str | None, to: str | None, clusters: Sequence[str]) -> Window:
    """--since (hours of the rollup), or --from [--to] (exact seconds, read from audit_events)."""
    cl = [c for x in clusters for c in x.split(",") if c]
    if from_ is None:
        if to is not None:
            raise VolumeError("--to needs --from")
        return Window.since(parse_since(since), cl)
    t0, t1 = parse_time(from_), parse_time(to) if to else int(time.time()) + 1
    if t1 <= t0:
        raise VolumeError("--to must be after --from")
    return Window(t0, t1, tuple(cl), exact=True)


def parse_by(text: str | Sequence[str]) -> list[str]:
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    out = []
    for n in names:
        n = ALIASES.get(n, n)
        if n not in DIMENSIONS:
            raise VolumeError(f"--by {n!r}: use any of {', '.join(DIMENSIONS)}")
        if n not in out:
            out.append(n)
    if not out:
        raise VolumeError("--by needs at least one of " + ", ".join(DIMENSIONS))
    return out


@dataclass
class Window:
    """The time a report covers, [from_s, to_s), and the clusters (all if empty). Normally whole hours of the
    rollup; ``exact`` reads the same groups from audit_events for exactly these seconds instead (a scan: for
    short windows such as an incident or a test run)."""

    from_s: int
    to_s: int
    clusters: tuple[str, ...] = ()
    exact: bool = False
    # a confined reader's clusters (pipeline.access; None = every cluster): ANDed with ``clusters``, only narrows
    allowed: tuple[str, ...] | None = None

    @classmethod
    def since(cls, seconds: int, clusters: Sequence[str] = (), now: float | None = None) -> Window:
        now = int(now if now is not None else time.time())
        return cls((now - seconds) // 3600 * 3600, (now // 3600 + 1) * 3600, tuple(clusters))

    def source(self) -> str:
        """The FROM of the volume queries: the rollup, or its groups computed from audit_events for the range."""
        if not self.exact:
            return "volume_1h"
        from pipeline.warehouse.migrations import VOLUME_SELECT

        return (f"({VOLUME_SELECT} WHERE request_received_ts >= fromUnixTimestamp64Micro({{t0us:Int64}}, 'UTC') "
                "AND request_received_ts < fromUnixTimestamp64Micro({t1us:Int64}, 'UTC') GROUP BY ALL)")  # fmt: skip

    def where(self) -> tuple[str, dict[str, Any]]:
        sql = "hour >= toDateTime({t0:UInt32}, 'UTC') AND hour < toDateTime({t1:UInt32}, 'UTC')"
        params: dict[str, Any] = {"t0": self.from_s // 3600 * 3600, "t1": self.to_s}
        if self.exact:
            params.update(t0us=self.from_s * 1_000_000, t1us=self.to_s * 1_000_000)
        if self.clusters:
            sql += " AND cluster IN {clusters:Array(String)}"
            params["clusters"] = list(self.clusters)
        if self.allowed is not None:
            if self.allowed:
                sql += " AND cluster IN {allowed:Array(String)}"
                params["allowed"] = list(self.allowed)
            else:
                sql += " AND 0"
        return sql, params


@dataclass
class Totals:
    events: int = 0
    bytes: int = 0
    object_bytes: int = 0

    def share(self, other: Totals) -> tuple[float, float]:
        return (other.events / self.events if self.events else 0.0, other.bytes / self.bytes if self.bytes else 0.0)


@dataclass
class Cost:
    """ClickHouse's compressed bytes of audit_events, and how they divide between objects and the rest."""

    compressed: int = 0
    uncompressed: int = 0
    rows: int = 0
    object_compressed: int = 0
    all_events: int = 0  # in the rollup, every hour (what the parts hold, retention aside)
    all_object_bytes: int = 0

    def of(self, events: int, object_bytes: int) -> int:
        """The compressed bytes apportioned to a group with these events and object bytes."""
        rest = self.compressed - self.object_compressed
        out = rest * events / self.all_events if self.all_events else 0.0
        if self.all_object_bytes:
            out += self.object_compressed * object_bytes / self.all_object_bytes
        return int(out)


@dataclass
class Group:
    key: dict[str, Any]
    events: int
    bytes: int
    object_bytes: int
    users: int = 0
    ch_bytes: int = 0
    share_events: float = 0.0
    share_bytes: float = 0.0


@dataclass
class Report:
    window: Window
    by: list[str]
    totals: Totals
    cost: Cost
    top: list[Group] = field(default_factory=list)
    categories: list[Group] = field(default_factory=list)
    series: list[tuple[int, int, int]] = field(default_factory=list)  # (hour, events, bytes)
    headline: str = ""

    def as_dict(self) -> dict[str, Any]:
        def g(x: Group) -> dict[str, Any]:
            return {**x.__dict__}

        return {
            "from": self.window.from_s, "to": self.window.to_s, "clusters": list(self.window.clusters),
            "by": self.by, "totals": self.totals.__dict__, "cost": self.cost.__dict__,
            "ch_bytes": self.cost.of(self.totals.events, self.totals.object_bytes),
            "headline": self.headline, "top": [g(x) for x in self.top], "categories": [g(x) for x in self.categories],
            "series": [{"hour": h, "events": e, "bytes": b} for h, e, b in self.series],
        }  # fmt: skip


def totals(run: Run, w: Window) -> Totals:
    where, params = w.where()
    rows = run(f"SELECT sum(events), sum(bytes), sum(object_bytes) FROM {w.source()} WHERE {where}", params)
    e, b, o = rows[0] if rows else (0, 0, 0)
    return Totals(int(e or 0), int(b or 0), int(o or 0))


def cost(run: Run) -> Cost:
    """Compressed bytes of audit_events' active parts, the object columns' part of them, and the rollup's
    all-time totals to apportion them by. Zero (unknown) where system tables cannot be read: the raw SQL API
    refuses ``system.*``, so a CLI going through it reports no ClickHouse cost."""
    try:
        return _cost(run)
    except Exception:  # noqa: BLE001 - refused or unreadable: the rest of the report stands without it
        return Cost()


def _cost(run: Run) -> Cost:
    rows = run(
        "SELECT sum(data_compressed_bytes), sum(data_uncompressed_bytes), sum(rows) FROM system.parts "
        "WHERE active AND database = currentDatabase() AND table = 'audit_events'",
        {},
    )
    c = Cost(*(int(x or 0) for x in rows[0])) if rows else Cost()
    obj = run(
        "SELECT sum(data_compressed_bytes) FROM system.columns WHERE database = currentDatabase() "
        "AND table = 'audit_events' AND name IN ('request_object', 'response_object')",
        {},
    )
    c.object_compressed = int(obj[0][0] or 0) if obj else 0
    allv = run("SELECT sum(events), sum(object_bytes) FROM volume_1h", {})
    c.all_events, c.all_object_bytes = (int(x or 0) for x in allv[0]) if allv else (0, 0)
    return c


def groups(run: Run, w: Window, by: Sequence[str], limit: int = 20, extra_where: str = "",
           extra_params: dict[str, Any] | None = None) -> list[Group]:  # fmt: skip
    """The top ``limit`` groups by events over the ``by`` dimensions."""
    cols = [DIMENSIONS[b] for b in by]
    where, params = w.where()
    if extra_where:
        where += f" AND ({extra_where})"
        params.update(extra_params or {})
    sel = ", ".join(f"{c} AS {b}" for c, b in zip(cols, by, strict=True))
    rows = run(
        f"SELECT {sel}, sum(events) AS e, sum(bytes) AS b, sum(object_bytes) AS o, uniqExact(username) AS u "
        f"FROM {w.source()} WHERE {where} GROUP BY {', '.join(by)} ORDER BY e DESC, b DESC LIMIT {int(limit)}",
        params,
    )
    n = len(by)
    return [Group(dict(zip(by, r[:n], strict=True)), int(r[n]), int(r[n + 1]), int(r[n + 2]), int(r[n + 3])) for r in rows]


def categories(run: Run, w: Window) -> list[Group]:
    where, params = w.where()
    params.update(probes=list(PROBES), reads=list(READS))
    case = "multiIf(" + ", ".join(f"{cond}, {i}" for i, (_, _, cond) in enumerate(CATEGORIES[:-1])) + f", {len(CATEGORIES) - 1})"
    rows = run(
        f"SELECT {case} AS c, sum(events), sum(bytes), sum(object_bytes), uniqExact(username) "
        f"FROM {w.source()} WHERE {where} GROUP BY c ORDER BY 2 DESC",
        params,
    )
    out = []
    for c, e, b, o, u in rows:
        cid, label, _ = CATEGORIES[int(c)]
        out.append(Group({"category": cid, "label": label}, int(e), int(b), int(o), int(u)))
    return out


def series(run: Run, w: Window) -> list[tuple[int, int, int]]:
    where, params = w.where()
    rows = run(
        f"SELECT toUnixTimestamp(hour) AS h, sum(events), sum(bytes) FROM {w.source()} WHERE {where} GROUP BY h ORDER BY h",
        params,
    )
    return [(int(h), int(e), int(b)) for h, e, b in rows]


def headline(cats: list[Group], total: Totals) -> str:
    """'3 service accounts' get/list/watch = 71% of events, 64% of bytes' for the biggest category."""
    named = [c for c in cats if c.key["category"] not in ("other", "writes", "other-reads")] or cats
    if not named or not total.events:
        return "no events in this window"
    top = max(named, key=lambda c: c.events)
    label = top.key["label"]
    if top.key["category"] in ("sa-reads", "node-reads", "control-plane-reads", "other-reads"):
        who = {"sa-reads": "service account", "node-reads": "node", "control-plane-reads": "control plane user",
               "other-reads": "user"}[top.key["category"]]  # fmt: skip
        label = f"{top.users} {who}{'s' if top.users != 1 else ''}' get/list/watch"
    return f"{label} = {pct(top.events / total.events)} of events, {pct(top.bytes / total.bytes if total.bytes else 0)} of bytes"


def report(run: Run, w: Window, by: Sequence[str] = ("user", "verb", "resource"), limit: int = 20,
           with_cost: bool = True) -> Report:  # fmt: skip
    t = totals(run, w)
    # the cost comes from whole-table figures (system.parts, every cluster's rollup): not for a confined reader
    c = cost(run) if with_cost and w.allowed is None else Cost()
    top = groups(run, w, by, limit)
    cats = categories(run, w)
    for g in [*top, *cats]:
        g.share_events, g.share_bytes = t.share(Totals(g.events, g.bytes))
        g.ch_bytes = c.of(g.events, g.object_bytes)
    return Report(w, list(by), t, c, top, cats, series(run, w), headline(cats, t))


def pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.1 or x == 0 else f"{100 * x:.1f}%"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
