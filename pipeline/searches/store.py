"""Saved searches in the ``saved_searches`` table (migration 5): a ReplacingMergeTree on name whose newest row
(``updated_at``) wins, so saving is an insert and deleting is an insert with ``deleted``. Reads use FINAL (the
table is small). Everything is validated here, before it is stored: a saved search always compiles."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.query import QueryError, compile_query
from pipeline.query.parser import duration_seconds

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
SEVERITIES = ("info", "low", "medium", "high", "critical")
COLUMNS = ["name", "query", "owner", "clusters", "since", "alert_every", "alert_window", "alert_when", "alert_for",
           "severity", "deleted", "updated_at"]  # fmt: skip
MIN_EVERY_S = 10
MAX_WINDOW_S = 31 * 86400


class SearchError(ValueError):
    """A saved search that cannot be stored (bad name, query, alert settings); ``column`` points into the text."""

    def __init__(self, message: str, column: int | None = None, field: str = "query") -> None:
        super().__init__(message)
        self.column = column
        self.field = field


@dataclass
class SavedSearch:
    name: str
    query: str
    owner: str = ""
    clusters: list[str] = field(default_factory=list)
    since: str = "1h"  # the range `search run` uses unless told otherwise
    alert_every: int = 0  # seconds; 0 = not an alert
    alert_window: int = 0  # seconds of events each evaluation reads
    alert_when: str = ""  # a having condition: count > 20
    alert_for: int = 1  # evaluations the condition must hold before the alert fires
    severity: str = "medium"
    updated_at: int = 0  # µs

    @property
    def is_alert(self) -> bool:
        return self.alert_every > 0

    @property
    def rule_id(self) -> str:
        """The alerts' rule_id: the saved search (prefixed so it never clashes with a stream rule's id)."""
        return f"search:{self.name}"

    def alert_query(self) -> str:
        """The query an evaluation runs: the saved query with the alert's condition as its having clause."""
        return f"{self.query} having {self.alert_when}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SavedSearch:
        if not isinstance(d, dict):
            raise SearchError("a saved search is a JSON object", field="body")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "updated_at"}
        for k in ("name", "query", "owner", "since", "alert_when", "severity"):  # each one a string (a number raised)
            if k in known and not isinstance(known[k], str):
                raise SearchError(f"{k} must be a string", field=k)
        if isinstance(known.get("clusters"), str):
            known["clusters"] = [known["clusters"]]
        if "clusters" in known and not isinstance(known["clusters"], list | type(None)):
            raise SearchError("clusters must be a list of cluster names", field="clusters")
        try:
            ss = cls(**known)
            ss.clusters = [str(c) for c in (ss.clusters or [])]
            ss.alert_every, ss.alert_window, ss.alert_for = int(ss.alert_every), int(ss.alert_window), int(ss.alert_for)
        except (TypeError, ValueError, OverflowError) as exc:
            raise SearchError(f"bad saved search: {exc}", field="body") from None
        for k in ("alert_every", "alert_window", "alert_for"):  # UInt32 columns: a negative one failed the insert
            if not 0 <= getattr(ss, k) < 2**31:
                raise SearchError(f"{k} must be between 0 and 2147483647", field=k)
        return ss


def parse_duration(text: str | int | None, what: str) -> int:
    if text is None or text == "":
        return 0
    if isinstance(text, int):
        return text
    secs = duration_seconds(str(text))
    if not secs:
        raise SearchError(f"cannot read {what} {text!r}: use e.g. 30s, 1m, 5m, 1h", field=what)
    return secs


def validate(ss: SavedSearch, settings: Any = None) -> SavedSearch:
    if not NAME_RE.match(ss.name or ""):
        raise SearchError("a name is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
                          field="name")  # fmt: skip
    if not ss.query or not ss.query.strip():
        raise SearchError("the query is empty")
    if any(not c or len(c) > 253 for c in ss.clusters):
        raise SearchError("cluster names are 1-253 characters", field="clusters")
    if ss.severity not in SEVERITIES:
        raise SearchError(f"severity is one of {', '.join(SEVERITIES)}", field="severity")
    try:
        cq = compile_query(ss.query, since=ss.since or None, cluster=ss.clusters or None, settings=settings)
    except QueryError as exc:
        raise SearchError(str(exc), exc.column) from None
    if not ss.is_alert:
        if ss.alert_when or ss.alert_window:
            raise SearchError("--when and --window need --every (how often the alert is evaluated)", field="every")
        return ss
    if ss.alert_every < MIN_EVERY_S:
        raise SearchError(f"--every is at least {MIN_EVERY_S}s", field="every")
    ss.alert_window = ss.alert_window or ss.alert_every
    if not 0 < ss.alert_window <= MAX_WINDOW_S:
        raise SearchError("--window is between 1s and 31d", field="window")
    if not 1 <= ss.alert_for <= 100:
        raise SearchError("--for is 1 to 100 evaluations", field="for")
    if not ss.alert_when.strip():
        raise SearchError("an alert needs --when, e.g. 'count > 20'", field="when")
    from pipeline.query.parser import parse

    q = parse(ss.query)
    if q.having is not None:
        raise SearchError("an alert's condition goes in --when, not in the query's having", field="query")
    if q.timeslice or q.before:
        raise SearchError("an alert query cannot use timeslice or before: each evaluation reads one window")
    del cq
    try:
        compile_query(evaluation_query(ss), since="1h", cluster=ss.clusters or None, settings=settings)
    except QueryError as exc:
        col = exc.column - len(ss.query) - len(" having ") if exc.column and exc.column > len(ss.query) else None
        raise SearchError(f"--when: {exc.message}", col if col and col > 0 else None, field="when") from None
    return ss


def evaluation_query(ss: SavedSearch) -> str:
    """A plain event filter alerts on its count; an aggregate query on its own aggregates."""
    from pipeline.query.parser import parse

    q = parse(ss.query)
    return ss.alert_query() if q.is_aggregate else f"{ss.query} count having {ss.alert_when}"


# (sql, params) -> rows ; (table, rows, columns) -> None
QueryFn = Callable[[str, dict[str, Any]], list[list[Any]]]
InsertFn = Callable[[str, list[list[Any]], list[str]], None]


class Store:
    """Saved searches over any warehouse access (a clickhouse-connect client or pipeline.warehouse.reader.Warehouse)."""

    def __init__(self, query: QueryFn, insert: InsertFn, settings: Any = None) -> None:
        self._query = query
        self._insert = insert
        self.settings = settings  # its clusters file checks monitor_group / tags in saved queries

    @classmethod
    def for_client(cls, client: Any) -> Store:
        return cls(lambda sql, p: [list(r) for r in client.query(sql, parameters=p).result_rows],
                   lambda t, rows, cols: client.insert(t, rows, column_names=cols, settings={"async_insert": 0}))  # fmt: skip

    @classmethod
    def for_warehouse(cls, wh: Any) -> Store:
        return cls(lambda sql, p: wh.query(sql, p)[1], wh.insert, getattr(wh, "s", None))

    def list(self, owner: str | None = None, alerts_only: bool = False) -> list[SavedSearch]:
        cond = " AND owner = {owner:String}" if owner else ""
        cond += " AND alert_every > 0" if alerts_only else ""
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM saved_searches FINAL WHERE NOT deleted{cond} "
                           "ORDER BY name", {"owner": owner} if owner else {})  # fmt: skip
        return [_from_row(r) for r in rows]

    def get(self, name: str) -> SavedSearch | None:
        rows = self._query(f"SELECT {', '.join(COLUMNS)} FROM saved_searches FINAL WHERE name = {{n:String}} "
                           "AND NOT deleted", {"n": name})  # fmt: skip
        return _from_row(rows[0]) if rows else None

    def save(self, ss: SavedSearch) -> SavedSearch:
        validate(ss, self.settings)
        ss.updated_at = max(time.time_ns() // 1000, self._newest(ss.name) + 1)
        self._insert("saved_searches", [_to_row(ss, deleted=False)], COLUMNS)
        return ss

    def delete(self, name: str) -> bool:
        ss = self.get(name)
        if ss is None:
            return False
        ss.updated_at = max(time.time_ns() // 1000, self._newest(name) + 1)
        self._insert("saved_searches", [_to_row(ss, deleted=True)], COLUMNS)
        return True

    def _newest(self, name: str) -> int:
        rows = self._query("SELECT toUnixTimestamp64Micro(max(updated_at)) FROM saved_searches WHERE name = {n:String}",
                           {"n": name})  # fmt: skip
        return int(rows[0][0] or 0) if rows else 0


def _to_row(ss: SavedSearch, deleted: bool) -> list[Any]:
    import datetime as dt

    ts = dt.datetime.fromtimestamp(ss.updated_at / 1e6, tz=dt.UTC)
    return [ss.name, ss.query, ss.owner, list(ss.clusters), ss.since, ss.alert_every, ss.alert_window, ss.alert_when,
            ss.alert_for, ss.severity, deleted, ts]  # fmt: skip


def _from_row(r: list[Any]) -> SavedSearch:
    import datetime as dt

    upd = r[11]
    if isinstance(upd, str):
        upd = dt.datetime.fromisoformat(upd.replace("Z", "+00:00"))
    if isinstance(upd, dt.datetime):
        upd = int(upd.replace(tzinfo=upd.tzinfo or dt.UTC).timestamp() * 1_000_000)
    return SavedSearch(r[0], r[1], r[2], list(r[3]), r[4], int(r[5]), int(r[6]), r[7], int(r[8]), r[9], int(upd or 0))
