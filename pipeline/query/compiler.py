"""AST -> parameterized ClickHouse SQL over audit_events. Every user-supplied value becomes a ``{pN:Type}``
parameter; the SQL text only ever contains our own column names, functions and generated aliases."""

from __future__ import annotations

import fnmatch
import math
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from pipeline.models.timestamps import TimestampError, clamp_us, parse_ts_us
from pipeline.query.clusters import ClusterMap, ClustersFileError
from pipeline.query.clusters import for_settings as clusters_for_settings
from pipeline.query.errors import QueryError, error_at
from pipeline.query.fields import HIDDEN, LOW_CARDINALITY, Field, resolve, suggest
from pipeline.query.parser import Agg, Cmp, HavingCmp, Logic, Not, Query, duration_seconds, parse

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
ROLE = "_role"  # timeslice ... before: 0 = the event's row in the current period, 1 = its row in the earlier one
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
    n_keys: int = 0  # aggregates: the first n_keys columns are the group (timeslice, groupby fields)
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
        return clamp_us(now_us - secs * 1_000_000), now_us + 1
    if from_ or to:
        lo = clamp_us(parse_time(from_, now_us)) if from_ else 0
        hi = clamp_us(parse_time(to, now_us)) if to else now_us + 1
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
    def __init__(self, q: Query, rng: tuple[int, int] | None, cluster: str | list[str] | None,
                 clusters: ClusterMap | None = None, settings: Any = None,
                 allowed: Collection[str] | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.q = q
        self.rng = rng
        self.cluster = cluster
        self.clusters = clusters
        self.allowed = None if allowed is None else sorted(set(allowed))
        self.ctx = _Ctx()

    # --- sources: monitor_group / tags from the clusters file --------------------------------------------
    def _cluster_map(self, c_col: int) -> ClusterMap:
        if self.clusters is None:  # read only when a query names them
            from pipeline.config import get_settings

            try:
                self.clusters = clusters_for_settings(self.settings or get_settings())
            except ClustersFileError as exc:
                raise error_at(str(exc), c_col) from None
        if not self.clusters.path and not self.clusters.clusters:
            raise error_at("monitor_group and tags come from the clusters file: set KAUDIT_CLUSTERS_FILE "
                           "(cluster -> group, labels)", c_col)  # fmt: skip
        return self.clusters

    def _group_sql(self, f: Field) -> str:
        """A field as an expression: monitor_group / tags map the cluster through the clusters file (as parameters)."""
        if f.kind in ("cluster_group", "cluster_labels"):
            cm = self._cluster_map(0)
            names = list(cm.clusters)
            if f.kind == "cluster_group":
                groups = [cm.clusters[n].group for n in names]
                return f"transform(cluster, {self.ctx.p(names, 'Array(String)')}, {self.ctx.p(groups, 'Array(String)')}, '')"
            tags = [cm.clusters[n].tags for n in names]
            # indexOf is 0 for a cluster the file does not name, and [0] is the element's default: no labels
            return f"arrayElement({self.ctx.p(tags, 'Array(Array(String))')}, indexOf({self.ctx.p(names, 'Array(String)')}, cluster))"
        return _field_sql(f, self.ctx)

    def _source_cmp(self, c: Cmp) -> str:
        """monitor_group / tags conditions, decided in Python for every cluster of the clusters file: the SQL is a
        cluster list (the table's first key column), never a per-row mapping."""
        cm = self._cluster_map(c.col)
        labels = c.field.kind == "cluster_labels"

        def values(info_group: str, info_tags: list[str]) -> list[str]:
            return info_tags if labels else ([info_group] if info_group else [])

        def holds(vals: list[str]) -> bool:
            op = c.op
            if op == "exists":
                return bool(vals)
            if op == "empty":
                return not vals
            want = [str(v) for v in c.values]
            if labels:  # tags="env:prod" = tags="env=prod"; tags="prod" matches a label key or value
                want = [w.replace(":", "=", 1) if "=" not in w else w for w in want]

            def one(v: str, w: str) -> bool:
                if op in ("=", "!=", "in"):
                    if labels and "=" not in w:
                        k, _, val = v.partition("=")
                        return fnmatch.fnmatchcase(k, w) or fnmatch.fnmatchcase(val, w)
                    return fnmatch.fnmatchcase(v, w)
                lv, lw = v.lower(), w.lower()
                return {"contains": lw in lv, "startswith": lv.startswith(lw), "endswith": lv.endswith(lw)}.get(op, False)

            if op in ("<", "<=", ">", ">="):
                raise error_at(f'"{c.field.name}" is a name; use =, !=, in, contains, startswith, endswith, is empty',
                               c.col)  # fmt: skip
            hit = any(one(v, w) for v in vals for w in want)
            return not hit if op == "!=" else hit

        yes = [n for n, info in cm.clusters.items() if holds(values(info.group, info.tags))]
        no = [n for n in cm.clusters if n not in yes]
        if holds([]):  # clusters the file does not name have no group and no labels: they match too
            return f"cluster NOT IN {self.ctx.p(no, 'Array(String)')}" if no else "1"
        return f"cluster IN {self.ctx.p(yes, 'Array(String)')}" if yes else "0"

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
        if f.kind in ("cluster_group", "cluster_labels"):
            return self._source_cmp(c)
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
        if isinstance(self.cluster, list | tuple):  # a saved search's clusters
            parts.append(f"cluster IN {self.ctx.p(list(self.cluster), 'Array(String)')}")
        elif self.cluster:
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
        if q.is_aggregate:
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
        p = self.ctx.p
        keys: list[tuple[str, str]] = []  # (sql, display)
        cur = prev = raw_cur = raw_prev = ""
        # timeslice ... before: an event can lie in both periods when they overlap (--since 7d ... before 1d); it
        # counts in its own bucket of the current series AND in the shifted bucket of the earlier one. The query is
        # staged: the inner one aggregates -State per (raw bucket of gcd(slice, shift) seconds, group) for each
        # period, the outer one gives each inner row a role (0 = current, 1 = earlier: shifted by before) and merges
        # the states of that role. A raw bucket never straddles a bucket of either series, and the rows are read once.
        staged = bool(before and q.timeslice)
        inner_cols: dict[str, str] = {}  # state SQL -> its inner alias
        if before:
            raw_cur, raw_prev = self._in_range(0), self._in_range(before)
            cur, prev = (f"{ROLE} = 0", f"{ROLE} = 1") if staged else (raw_cur, raw_prev)
        if staged:
            step = math.gcd(q.timeslice, before)
            keys.append((f"toStartOfInterval(_r + toIntervalSecond({ROLE} * {p(before, 'Int64')}), "
                         f"toIntervalSecond({p(q.timeslice, 'UInt32')}))", "timeslice"))  # fmt: skip
        elif q.timeslice:
            keys.append((f"toStartOfInterval({TS}, toIntervalSecond({p(q.timeslice, 'UInt32')}))", "timeslice"))
        group_sql: list[str] = []  # the groupby fields' SQL (over audit_events)
        for f in q.groupby:
            expr = self._group_sql(f)
            group_sql.append(f"arrayJoin({expr})" if f.kind in ("array", "cluster_labels") else expr)
            keys.append((f"_g{len(group_sql) - 1}" if staged else group_sql[-1], f.name))
        only_distinct = (not keys and not q.count_listed and len(q.aggs) == 1 and q.aggs[0].func == "distinct"
                         and not before and q.having is None)  # fmt: skip
        if only_distinct:  # `distinct(username)` alone: one row per value
            f = q.aggs[0].field
            expr = self._group_sql(f)
            keys.append((f"arrayJoin({expr})" if f.kind in ("array", "cluster_labels") else expr, f.name))
        periods = [(cur, ""), (prev, "_before")] if before else [("", "")]

        def agg_sql(a: Agg, cond: str) -> str:
            if not staged:
                return self._agg_sql(a, cond)
            role = 0 if cond == cur else 1
            raw = raw_cur if role == 0 else raw_prev
            parts, combine = self._agg_parts(a)
            merged = []
            for fn, params, arg, extra in parts:
                both = " AND ".join(f"({c})" for c in (extra, raw) if c)
                state = f"{fn}IfState{params}({arg + ', ' if arg else ''}{both})"
                alias_ = inner_cols.setdefault(state, f"_s{len(inner_cols)}")
                merged.append(f"{fn}IfMergeIf{params}({alias_}, {ROLE} = {role})")
            return combine(merged)

        aggs: list[tuple[str, str]] = []  # (sql, display)
        listed = [] if only_distinct else list(q.aggs)
        with_count = not only_distinct and (q.has_groupby or q.count_listed or not listed)
        for a in ([Agg("count", None, 0)] if with_count else []) + listed:
            for cond, suffix in periods:
                aggs.append((agg_sql(a, cond), a.name + suffix))
        outputs = [(s_, n) for s_, n in keys] + aggs
        excl = {(x.name if isinstance(x, Field) else x) for x, _ in q.exclude}
        incl = {f.name for f, _ in q.include}
        key_names = {n for _, n in keys}
        shown = [(s_, n) for s_, n in outputs if n not in excl and (not incl or n in incl or n not in key_names)]
        if not shown:
            raise QueryError("exclude removed every column")
        select = [f"{s_} AS k{i}" for i, (s_, _) in enumerate(keys)] + [f"{s_} AS a{i}" for i, (s_, _) in enumerate(aggs)]
        alias = {n: f"k{i}" for i, (_, n) in enumerate(keys)} | {n: f"a{i}" for i, (_, n) in enumerate(aggs)}

        def ref(a: Agg, col: int) -> str:
            """An aggregate in having / sort / top: its column when shown, else its expression."""
            if a.before and not before:
                raise error_at(f'"{a.name}" needs before (e.g. before 1d)', col)
            name = a.name
            if name in alias:
                return alias[name]
            return agg_sql(a, prev if a.before else cur)

        where = self.where(extra_range=not before)
        if before:
            where = f"({where}) AND ({raw_cur} OR {raw_prev})"
        having = f" HAVING {self._having(q.having, ref)}" if q.having is not None else ""
        order = []
        for k in q.sort:
            if k.agg is not None:
                order.append(f"{ref(k.agg, k.col)} {'DESC' if k.desc else 'ASC'}")
                continue
            name = k.name
            f = resolve(name)
            target = alias.get(name) or (alias.get(f.name) if f else None) or alias.get(name.lower())
            if target is None:
                raise error_at(f'cannot sort by "{name}": it is not a column of the result ({", ".join(alias)})',
                               k.col)  # fmt: skip
            order.append(f"{target} {'DESC' if k.desc else 'ASC'}")
        if order:  # one answer under LIMIT: ties of the sort broken by the group keys it does not name
            named = {o.rpartition(" ")[0] for o in order}
            order += [f"k{i} ASC" for i in range(len(keys)) if f"k{i}" not in named]
        rank_by = None
        if q.top:
            if not keys:
                raise error_at("top ranks groups: add groupby (to list events, use limit)", q.top_col)
            rank_by = ref(q.top_by, q.top_col) if q.top_by else "a0"
        if not order:
            if only_distinct:
                order = ["k0 ASC"]
            elif rank_by and (not q.timeslice or len(keys) == 1):
                order = [f"{rank_by} DESC"] + [f"k{i} ASC" for i in range(len(keys))]
            else:
                order = (["k0 ASC"] if q.timeslice else []) + ["a0 DESC"] + [f"k{i} ASC" for i in range(len(keys))]
        limit = min(q.limit or DEFAULT_GROUP_LIMIT, MAX_LIMIT)
        group = f" GROUP BY {', '.join(f'k{i}' for i in range(len(keys)))}" if keys else ""
        names = [n for _, n in shown]
        outer_cols = ", ".join(alias[n] for n in names)
        n_keys = len(key_names & set(names))

        def grouped(where_: str, extra: str = "") -> str:
            """SELECT keys, aggregates[, extra] ... GROUP BY ... HAVING (no ORDER BY / LIMIT)."""
            if not staged:
                return f"SELECT {', '.join(select)}{extra} FROM audit_events WHERE {where_}{group}{having}"
            inner_group = ", ".join(["_r"] + [f"_g{i}" for i in range(len(group_sql))])
            inner_sel = ([f"toStartOfInterval({TS}, toIntervalSecond({p(step, 'UInt32')})) AS _r"]
                         + [f"{g} AS _g{i}" for i, g in enumerate(group_sql)]
                         + [f"countIf({raw_cur}) AS _n0", f"countIf({raw_prev}) AS _n1"]
                         + [f"{st} AS {al}" for st, al in inner_cols.items()])  # fmt: skip
            inner = f"SELECT {', '.join(inner_sel)} FROM audit_events WHERE {where_} GROUP BY {inner_group}"
            return (f"SELECT {', '.join(select)}{extra} FROM ({inner}) ARRAY JOIN [0, 1] AS {ROLE} "
                    f"WHERE ({ROLE} = 0 AND _n0 > 0) OR ({ROLE} = 1 AND _n1 > 0){group}{having}")  # fmt: skip

        if rank_by and q.timeslice and len(keys) > 1:
            # top n with timeslice: every bucket of the n groups ranked highest over the whole range
            if q.top_by is not None:
                rank_sql = self._agg_sql(q.top_by, raw_prev if q.top_by.before else raw_cur)
            else:
                rank_sql = self._agg_sql(Agg("count", None, 0), raw_cur)
            if not q.limit:
                limit = MAX_LIMIT
            if any("arrayJoin(" in sq for sq in group_sql):  # a list field: rank with window functions
                gkeys = ", ".join(f"k{i}" for i in range(1, len(keys)))
                ranked = (f"SELECT *, dense_rank() OVER (ORDER BY _group_total DESC, {gkeys}) AS _group_rank FROM "
                          f"(SELECT *, sum(_rank_value) OVER (PARTITION BY {gkeys}) AS _group_total FROM "
                          f"({grouped(where, f', {rank_by} AS _rank_value')}))")  # fmt: skip
                sql = (f"SELECT {outer_cols} FROM ({ranked}) WHERE _group_rank <= {int(q.top)} "
                       f"ORDER BY {', '.join(order)} LIMIT {int(limit)}")  # fmt: skip
                return CompiledQuery(sql, self.ctx.params, names, "aggregate", self.rng, n_keys=n_keys)
            galias = ", ".join(f"_t{i}" for i in range(len(group_sql)))
            top_sql = (f"SELECT {galias} FROM (SELECT {', '.join(f'{sq} AS _t{i}' for i, sq in enumerate(group_sql))}, "
                       f"{rank_sql} AS _rank FROM audit_events WHERE {where} GROUP BY {galias} "
                       f"ORDER BY _rank DESC, {galias} LIMIT {int(q.top)})")  # fmt: skip
            where = f"({where}) AND ({', '.join(group_sql)}) IN ({top_sql})"
            rank_by = None
        if rank_by:
            limit = min(limit, q.top)
        if (not keys and not before and q.having is None and not q.sort and len(aggs) == 1 and listed
                and listed[0].func == "count_distinct" and listed[0].field.kind not in ("array", "cluster_labels")):
            # count_distinct(f) alone: GROUP BY f and count the groups (LowCardinality groups by dictionary index:
            # about twice as fast as uniqExact hashing every value)
            sql = (f"SELECT count() AS a0 FROM (SELECT {self._group_sql(listed[0].field)} AS d FROM audit_events "
                   f"WHERE {where} GROUP BY d)")  # fmt: skip
            return CompiledQuery(sql, self.ctx.params, names, "aggregate", self.rng)
        inner = f"{grouped(where)} ORDER BY {', '.join(order)} LIMIT {int(limit)}"
        sql = f"SELECT {outer_cols} FROM ({inner})" if len(shown) != len(outputs) else inner
        return CompiledQuery(sql, self.ctx.params, names, "aggregate", self.rng, n_keys=n_keys)

    def _agg_parts(self, a: Agg) -> tuple[list[tuple[str, str, str, str]], Any]:
        """An aggregate as ClickHouse aggregate functions and how to combine them:
        ([(function, parameters, argument, extra condition)], combine(list of their SQL) -> SQL)."""
        if a.func == "count":
            return [("count", "", "", "")], lambda xs: xs[0]
        if a.func == "ratio":
            num, den = (self.cond(x) for x in a.conds)
            return [("count", "", "", num), ("count", "", "", den)], lambda xs: f"if({xs[1]} = 0, nan, {xs[0]} / {xs[1]})"
        arg = self._group_sql(a.field)
        if a.func == "distinct":
            fn = "groupUniqArrayArray" if a.field.kind in ("array", "cluster_labels") else "groupUniqArray"
            return [(fn, "", arg, "")], lambda xs: f"arraySort({xs[0]})"
        if a.func == "percentile":
            level = repr(float(a.level) / 100.0)  # a number the parser read, never text
            return [("quantileExactInclusive", f"({level})", arg, "")], lambda xs: xs[0]  # on the column: no Float64
        if a.func == "sd":
            return [("stddevSamp", "", arg, "")], lambda xs: xs[0]
        if a.func == "count_distinct" and a.field.sql in LOW_CARDINALITY and a.field.map_key is None:
            # the 128-bit hash uniqExact keeps of a string anyway, computed once per dictionary value; as UInt128,
            # not sipHash128's FixedString(16), which uniqExact would hash again as a string (3-4x slower)
            return [("uniqExact", "", f"reinterpretAsUInt128(sipHash128({arg}))", "")], lambda xs: xs[0]
        return [(AGG_SQL[a.func], "", arg, "")], lambda xs: xs[0]

    def _agg_sql(self, a: Agg, cond: str) -> str:
        """SQL of one aggregate, over the rows where ``cond`` holds (every row when empty)."""
        parts, combine = self._agg_parts(a)
        out = []
        for fn, params, arg, extra in parts:
            conds = " AND ".join(f"({c})" for c in (extra, cond) if c)
            if conds:
                out.append(f"{fn}If{params}({arg + ', ' if arg else ''}{conds})")
            else:
                out.append(f"{fn}{params}({arg})")
        return combine(out)

    def _having(self, node: object, ref: Any) -> str:
        if isinstance(node, Logic):
            return "(" + f" {node.op.upper()} ".join(self._having(i, ref) for i in node.items) + ")"
        if isinstance(node, Not):
            return f"NOT ({self._having(node.item, ref)})"
        assert isinstance(node, HavingCmp)
        return f"({ref(node.agg, node.col)} {node.op} {self.ctx.p(node.value, 'Float64')})"


def compile_query(
    text: str, *, since: str | None = None, from_: str | None = None, to: str | None = None,
    cluster: str | list[str] | None = None, now_us: int | None = None, clusters: ClusterMap | None = None,
    settings: Any = None, allowed_clusters: Collection[str] | None = None,
) -> CompiledQuery:
    """Compile a query-language string; raises QueryError (with .column) on any problem. ``clusters`` (or the
    clusters file of ``settings``, else of the environment) resolves monitor_group and tags;
    ``allowed_clusters`` (a reader's clusters; None = all) confines the statement's WHERE to them, as a bound
    parameter."""
    if len(text) > 20_000:
        raise QueryError("query too long (20,000 characters at most)")
    q = parse(text)
    rng = time_range(since, from_, to, now_us)
    out = Compiler(q, rng, cluster, clusters, settings, allowed_clusters).compile()
    if any(f.name in HIDDEN for f, _ in q.include):
        out.notes.append("request/response objects can be large")
    return out
