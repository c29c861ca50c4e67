"""AST -> parameterized ClickHouse SQL over audit_events. Every user-supplied value becomes a ``{pN:Type}``
parameter; the SQL text only ever contains our own column names, functions and generated aliases."""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pipeline.models.timestamps import TimestampError, parse_ts_us
from pipeline.query.errors import QueryError, error_at
from pipeline.query.fields import HIDDEN, Field, resolve, suggest
from pipeline.query.parser import Cmp, Logic, Not, Query, duration_seconds, parse

TS = "request_received_ts"
LOGTYPE = "Kubernetes Audit Logs"
DEFAULT_EVENT_FIELDS = [
    "request_received_ts", "cluster", "stage", "verb", "username", "objectref_resource", "objectref_namespace",
    "objectref_name", "objectref_subresource", "responsestatus_code", "sourceips", "useragent", "auditid",
]  # fmt: skip
DEFAULT_EVENT_LIMIT = 100
DEFAULT_GROUP_LIMIT = 1000
MAX_LIMIT = 1_000_000
WINDOW_MAX_LIMIT = 10_000  # listings up to this LIMIT get a window_sql (newest-first search)
WINDOW_MARK = "__window__"  # in window_sql: replaced by a time condition (pipeline.query.listing)
WINDOW_LIMIT = "wlimit"  # window_sql's LIMIT parameter; never clashes with the generated p0, p1, ...
AGG_SQL = {"count_distinct": "uniqExact", "sum": "sum", "min": "min", "max": "max", "avg": "avg"}


@dataclass
class CompiledQuery:
    sql: str
    params: dict[str, Any]
    columns: list[str]  # display names, in SELECT order
    kind: str  # events | aggregate
    time_range: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    limit: int = 0  # events: the LIMIT of ``sql``
    # events sorted newest first: ``sql`` with WINDOW_MARK (a time window) and a LIMIT parameter, so that
    # pipeline.query.listing can search the newest events first; None when the sort does not allow it
    window_sql: str | None = None


class _Ctx:
    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def p(self, value: Any, ch_type: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ch_type}}}"


def parse_time(text: str, now_us: int) -> int:
    """ISO 8601, epoch seconds, 'now', or 'now-1h' / '-1h' -> µs."""
    t = text.strip()
    low = t.lower()
    if low == "now":
        return now_us
    m = re.fullmatch(r"(?:now)?\s*-\s*(\S+)", low)
    if m and duration_seconds(m.group(1)):
        return now_us - duration_seconds(m.group(1)) * 1_000_000
    if re.fullmatch(r"\d{9,10}(\.\d+)?", t):
        return int(float(t) * 1_000_000)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        t += "T00:00:00Z"
    try:
        return parse_ts_us(t)
    except TimestampError as exc:
        raise QueryError(f"cannot read time {text!r}: use ISO 8601 (2024-05-01T10:00:00Z), epoch seconds or now-1h") from exc


def time_range(since: str | None = None, from_: str | None = None, to: str | None = None,
               now_us: int | None = None) -> tuple[int, int] | None:  # fmt: skip
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    if since and (from_ or to):
        raise QueryError("give either --since or --from/--to, not both")
    if since and since.strip().lower() in ("all", "ever"):  # the dashboard's "all time"
        since = None
    if since:
        secs = duration_seconds(since)
        if not secs:
            raise QueryError(f"cannot read duration {since!r}: use e.g. 15m, 1h, 7d")
        return now_us - secs * 1_000_000, now_us + 1
    if from_ or to:
        lo = parse_time(from_, now_us) if from_ else 0
        hi = parse_time(to, now_us) if to else now_us + 1
        if hi <= lo:
            raise QueryError("--to must be after --from")
        return lo, hi
    return None


def _like_pattern(value: str, prefix: str = "", suffix: str = "") -> str:
    esc = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
    return f"{prefix}{esc}{suffix}"


def _num(v: Any, c: Cmp) -> tuple[Any, str]:
    text = str(v).strip()
    try:
        return int(text), "Int64"
    except ValueError:
        pass
    try:
        return float(text), "Float64"
    except ValueError:
        raise error_at(f'"{c.field.name}" is numeric; "{v}" is not a number', c.col) from None


def _field_sql(f: Field, ctx: _Ctx) -> str:
    if f.map_key is not None:
        return f"{f.sql}[{ctx.p(f.map_key, 'String')}]"
    return f.sql


class Compiler:
    def __init__(self, q: Query, rng: tuple[int, int] | None, cluster: str | None,
                 allowed: Collection[str] | None = None) -> None:  # fmt: skip
        self.q = q
        self.rng = rng
        self.cluster = cluster
        self.allowed = None if allowed is None else sorted(set(allowed))
        self.ctx = _Ctx()

    # --- conditions ------------------------------------------------------------------------------------
    def cond(self, node: object) -> str:
        if isinstance(node, Logic):
            op = node.op.upper()
            neutral = "1" if op == "AND" else "0"  # e.g. logtype="Kubernetes Audit Logs" compiles to 1
            items = [sql for sql in (self.cond(i) for i in node.items) if sql != neutral] or [neutral]
            return "(" + f" {op} ".join(items) + ")"
        if isinstance(node, Not):
            return f"NOT ({self.cond(node.item)})"
        assert isinstance(node, Cmp)
        sql = self.cmp(node)
        return f"NOT ({sql})" if node.negate else sql

    def cmp(self, c: Cmp) -> str:
        p = self.ctx.p
        if c.field is None:  # logtype: every stored event is a Kubernetes audit event
            if c.op not in ("=", "!=", "in"):
                raise error_at("logtype only supports = , != and in", c.col)
            hit = any(fnmatch.fnmatchcase(LOGTYPE.lower(), str(v).lower()) for v in c.values)
            return "1" if hit == (c.op != "!=") else "0"
        f, op, vals = c.field, c.op, c.values
        if f.map_key is not None and op in ("exists", "empty"):
            has = f"mapContains({f.sql}, {p(f.map_key, 'String')})"
            if op == "exists":
                return has
            return f"({_field_sql(f, self.ctx)} = '')"
        col = _field_sql(f, self.ctx)
        kind = f.kind
        if kind == "map":
            if op == "exists" or op == "empty":
                return f"notEmpty({col})" if op == "exists" else f"empty({col})"
            if op in ("contains", "startswith", "endswith", "="):
                pat = self._pat(op, str(vals[0]))
                return (f"(arrayExists(x -> ilike(x, {p(pat, 'String')}), mapValues({col})) OR "
                        f"arrayExists(x -> ilike(x, {p(pat, 'String')}), mapKeys({col})))")  # fmt: skip
            raise error_at(f'"{f.name}" is a map: use {f.name}.<key> (e.g. annotations.authorization.k8s.io/decision)',
                           c.col)  # fmt: skip
        if kind == "array":
            if op == "exists":
                return f"notEmpty({col})"
            if op == "empty":
                return f"empty({col})"
            if op in ("=", "!="):
                v = str(vals[0])
                sql = (f"arrayExists(x -> like(x, {p(_like_pattern(v), 'String')}), {col})" if "*" in v
                       else f"has({col}, {p(v, 'String')})")  # fmt: skip
                return sql if op == "=" else f"NOT {sql}"
            if op in ("contains", "startswith", "endswith"):
                return f"arrayExists(x -> ilike(x, {p(self._pat(op, str(vals[0])), 'String')}), {col})"
            if op == "in":
                plain = [str(v) for v in vals if "*" not in str(v)]
                parts = [f"hasAny({col}, {p(plain, 'Array(String)')})"] if plain else []
                parts += [f"arrayExists(x -> like(x, {p(_like_pattern(str(v)), 'String')}), {col})"
                          for v in vals if "*" in str(v)]  # fmt: skip
                return "(" + " OR ".join(parts) + ")"
            raise error_at(f'"{f.name}" is a list; use =, !=, contains, in, exists or is empty', c.col)
        if kind == "bool":
            if op == "exists":
                return col
            if op == "empty":
                return f"NOT {col}"
            if op not in ("=", "!="):
                raise error_at(f'"{f.name}" is true/false; use = or !=', c.col)
            b = str(vals[0]).lower() in ("true", "1", "yes")
            return f"{col} {op} {p(b, 'Bool')}"
        if kind == "number":
            if op == "exists":
                return f"({col} != 0)"
            if op == "empty":
                return f"({col} = 0)"
            if op in ("contains", "startswith", "endswith") or (op in ("=", "!=") and "*" in str(vals[0])):
                fn = "like" if op in ("=", "!=") else "ilike"
                sql = f"{fn}(toString({col}), {p(self._pat(op, str(vals[0])), 'String')})"
                return f"NOT {sql}" if op == "!=" else sql
            if op == "in":
                nums = [_num(v, c) for v in vals]
                typ = "Float64" if any(t == "Float64" for _, t in nums) else "Int64"
                return f"{col} IN {p([n for n, _ in nums], f'Array({typ})')}"
            n, typ = _num(vals[0], c)
            return f"{col} {op} {p(n, typ)}"
        if kind == "time":
            if op == "exists":
                return f"(toUnixTimestamp64Micro({col}) != 0)"
            if op == "empty":
                return f"(toUnixTimestamp64Micro({col}) = 0)"
            if op in ("=", "!=", "<", "<=", ">", ">="):
                us = parse_time(str(vals[0]), time.time_ns() // 1000)
                return f"toUnixTimestamp64Micro({col}) {op} {p(us, 'Int64')}"
            if op == "in":
                return f"toUnixTimestamp64Micro({col}) IN {p([parse_time(str(v), 0) for v in vals], 'Array(Int64)')}"
            raise error_at(f'"{f.name}" is a time; use =, !=, <, <=, >, >=', c.col)
        # string
        if op == "exists":
            return f"({col} != '')"
        if op == "empty":
            return f"({col} = '')"
        if op in ("=", "!="):
            v = str(vals[0])
            if "*" in v:
                sql = f"like({col}, {p(_like_pattern(v), 'String')})"
                return sql if op == "=" else f"NOT {sql}"
            return f"{col} {op} {p(v, 'String')}"
        if op in ("<", "<=", ">", ">="):
            return f"{col} {op} {p(str(vals[0]), 'String')}"
        if op in ("contains", "startswith", "endswith"):
            return f"ilike({col}, {p(self._pat(op, str(vals[0])), 'String')})"
        if op == "in":
            plain = [str(v) for v in vals if "*" not in str(v)]
            parts = [f"{col} IN {p(plain, 'Array(String)')}"] if plain else []
            parts += [f"like({col}, {p(_like_pattern(str(v)), 'String')})" for v in vals if "*" in str(v)]
            return "(" + " OR ".join(parts) + ")"
        raise error_at(f"operator {op} is not supported on {f.name}", c.col)  # pragma: no cover

    @staticmethod
    def _pat(op: str, v: str) -> str:
        if op == "contains":
            return _like_pattern(v, "%", "%")
        if op == "startswith":
            return _like_pattern(v, "", "%")
        if op == "endswith":
            return _like_pattern(v, "%", "")
        return _like_pattern(v)

    # --- statement ---------------------------------------------------------------------------------------
    def where(self, extra_range: bool = True) -> str:
        parts = []
        if self.q.where is not None:
            parts.append(self.cond(self.q.where))
        if self.cluster:
            parts.append(f"cluster = {self.ctx.p(self.cluster, 'String')}")
        if self.allowed is not None:  # the reader's clusters: ANDed with everything else, so it only narrows
            parts.append(f"cluster IN {self.ctx.p(self.allowed, 'Array(String)')}" if self.allowed else "0")
        if self.rng and extra_range:
            parts.append(self._in_range(0))
        return " AND ".join(parts) if parts else "1"

    def _in_range(self, shift_s: int) -> str:
        lo, hi = self.rng
        shift = shift_s * 1_000_000
        return (f"({TS} >= fromUnixTimestamp64Micro({self.ctx.p(lo - shift, 'Int64')}, 'UTC') AND "
                f"{TS} < fromUnixTimestamp64Micro({self.ctx.p(hi - shift, 'Int64')}, 'UTC'))")  # fmt: skip

    def compile(self) -> CompiledQuery:
        q = self.q
        if q.before and not self.rng:
            raise QueryError("before needs a time range: add --since (e.g. --since 1d) or --from/--to")
        if q.has_groupby or q.timeslice or q.before:
            return self.aggregate()
        return self.events()

    def events(self) -> CompiledQuery:
        q = self.q
        if q.include:
            fields = [f for f, _ in q.include]
        else:
            fields = [resolve(n) for n in DEFAULT_EVENT_FIELDS]
        excl = {(x.name if isinstance(x, Field) else x) for x, _ in q.exclude}
        fields = [f for f in fields if f.name not in excl]
        if not fields:
            raise QueryError("exclude removed every field")
        select, names = [], []
        for i, f in enumerate(fields):
            select.append(f"{_field_sql(f, self.ctx)} AS c{i}")
            names.append(f.name)
        where = self.where()
        order = []
        for k in q.sort or []:
            f = resolve(k.name)
            if f is None:
                hint = suggest(k.name)
                raise error_at(f'unknown field "{k.name}"', k.col, f'did you mean "{hint}"?' if hint else "")
            order.append(f"{_field_sql(f, self.ctx)} {'DESC' if k.desc else 'ASC'}")
        order = order or [f"{TS} DESC", "stage_ts DESC"]
        limit = min(q.limit or DEFAULT_EVENT_LIMIT, MAX_LIMIT)
        sql = (f"SELECT {', '.join(select)} FROM audit_events WHERE {where} "
               f"ORDER BY {', '.join(order)} LIMIT {int(limit)}")  # fmt: skip
        window_sql = None
        if order[0] == f"{TS} DESC" and limit <= WINDOW_MAX_LIMIT:
            window_sql = (f"SELECT {', '.join(select)} FROM audit_events WHERE {where} AND {WINDOW_MARK} "
                          f"ORDER BY {', '.join(order)} LIMIT {{{WINDOW_LIMIT}:UInt64}}")  # fmt: skip
        return CompiledQuery(sql, self.ctx.params, names, "events", self.rng, limit=limit,
                             window_sql=window_sql)  # fmt: skip

    def aggregate(self) -> CompiledQuery:
        q = self.q
        before = q.before
        keys: list[tuple[str, str]] = []  # (sql, display)
        cur = prev = ""
        if before:
            cur = self._in_range(0)
            prev = self._in_range(before)
        if q.timeslice:
            ts = f"{TS} + toIntervalSecond(if({prev}, {self.ctx.p(before, 'Int64')}, 0))" if before else TS
            keys.append((f"toStartOfInterval({ts}, toIntervalSecond({self.ctx.p(q.timeslice, 'UInt32')}))", "timeslice"))
        for f in q.groupby:
            expr = _field_sql(f, self.ctx)
            keys.append((f"arrayJoin({expr})" if f.kind == "array" else expr, f.name))
        aggs: list[tuple[str, str]] = []

        def agg(func: str, arg: str | None, name: str) -> None:
            if before:
                if func == "count":
                    aggs.append((f"countIf({cur})", name))
                    aggs.append((f"countIf({prev})", f"{name}_before"))
                else:
                    aggs.append((f"{AGG_SQL[func]}If({arg}, {cur})", name))
                    aggs.append((f"{AGG_SQL[func]}If({arg}, {prev})", f"{name}_before"))
            else:
                aggs.append(("count()" if func == "count" else f"{AGG_SQL[func]}({arg})", name))

        agg("count", None, "count")
        for a in q.aggs:
            agg(a.func, _field_sql(a.field, self.ctx), a.name)
        outputs = [(s, n) for s, n in keys] + aggs
        excl = {(x.name if isinstance(x, Field) else x) for x, _ in q.exclude}
        incl = {f.name for f, _ in q.include}
        shown = [(s, n) for s, n in outputs if n not in excl and (not incl or n in incl or n == "count"
                                                                   or n.endswith(")") or n.endswith("_before"))]  # fmt: skip
        if not shown:
            raise QueryError("exclude removed every column")
        select = [f"{s} AS k{i}" for i, (s, _) in enumerate(keys)] + [f"{s} AS a{i}" for i, (s, _) in enumerate(aggs)]
        alias = {n: f"k{i}" for i, (_, n) in enumerate(keys)} | {n: f"a{i}" for i, (_, n) in enumerate(aggs)}
        where = self.where(extra_range=not before)
        if before:
            where = f"({where}) AND ({cur} OR {prev})"
        order = []
        for k in q.sort:
            name = k.name
            f = resolve(name)
            target = alias.get(name) or (alias.get(f.name) if f else None) or alias.get(name.lower())
            if target is None:
                raise error_at(f'cannot sort by "{name}": it is not a column of the result ({", ".join(alias)})',
                               k.col)  # fmt: skip
            order.append(f"{target} {'DESC' if k.desc else 'ASC'}")
        if not order:
            order = (["k0 ASC"] if q.timeslice else []) + ["a0 DESC"] + [f"k{i} ASC" for i in range(len(keys))]
        limit = min(q.limit or DEFAULT_GROUP_LIMIT, MAX_LIMIT)
        group = f" GROUP BY {', '.join(f'k{i}' for i in range(len(keys)))}" if keys else ""
        inner = (f"SELECT {', '.join(select)} FROM audit_events WHERE {where}{group} "
                 f"ORDER BY {', '.join(order)} LIMIT {int(limit)}")  # fmt: skip
        if len(shown) != len(outputs):
            sql = f"SELECT {', '.join(alias[n] for _, n in shown)} FROM ({inner})"
        else:
            sql = inner
        return CompiledQuery(sql, self.ctx.params, [n for _, n in shown], "aggregate", self.rng)


def compile_query(
    text: str, *, since: str | None = None, from_: str | None = None, to: str | None = None,
    cluster: str | None = None, now_us: int | None = None, allowed_clusters: Collection[str] | None = None,
) -> CompiledQuery:
    """Compile a query-language string; raises QueryError (with .column) on any problem. ``allowed_clusters``
    (a reader's clusters; None = all) confines the statement's WHERE to them, as a bound parameter."""
    if len(text) > 20_000:
        raise QueryError("query too long (20,000 characters at most)")
    q = parse(text)
    rng = time_range(since, from_, to, now_us)
    out = Compiler(q, rng, cluster, allowed_clusters).compile()
    if any(f.name in HIDDEN for f, _ in q.include):
        out.notes.append("request/response objects can be large")
    return out
