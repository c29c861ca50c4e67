"""Tokenizer and recursive-descent parser: query text -> AST (conditions + clauses), with column positions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.query.errors import error_at
from pipeline.query.fields import Field, resolve, suggest

OPS = ("!=", "<>", "<=", ">=", "=", "<", ">")
WORD_RE = re.compile(r"[^\s()=!<>,\"']+")
DURATION_RE = re.compile(r"^(\d+)(s|sec|m|min|h|hr|d|day|days|w|wk)$", re.I)
UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "day": 86400,
                "days": 86400, "w": 604800, "wk": 604800}  # fmt: skip
CLAUSES = {"groupby", "group", "timeslice", "include", "exclude", "before", "sort", "order", "limit", "having", "top"}
# aggregates: count (alone or count(f)), count_distinct(f), sum/min/max/avg/sd(f), distinct(f), percentile(f, p),
# ratio(condition, condition)
AGGS = {"count", "count_distinct", "sum", "min", "max", "avg", "sd", "stddev", "distinct", "percentile", "ratio"}
STRING_OPS = {"contains", "startswith", "endswith"}


@dataclass(frozen=True)
class Tok:
    kind: str  # str | word | op | ( | ) | , | eof
    value: str
    col: int  # 1-based

    @property
    def low(self) -> str:
        return self.value.lower() if self.kind == "word" else ""


def tokenize(text: str) -> list[Tok]:
    toks: list[Tok] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        col = i + 1
        if ch in "\"'":
            j, buf = i + 1, []
            while j < n and text[j] != ch:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise error_at("unterminated string", col)
            toks.append(Tok("str", "".join(buf), col))
            i = j + 1
            continue
        if ch in "(),":
            toks.append(Tok(ch, ch, col))
            i += 1
            continue
        op = next((o for o in OPS if text.startswith(o, i)), None)
        if op:
            toks.append(Tok("op", "!=" if op == "<>" else op, col))
            i += len(op)
            continue
        m = WORD_RE.match(text, i)
        if not m:
            raise error_at(f"unexpected character {ch!r}", col)
        toks.append(Tok("word", m.group(), col))
        i = m.end()
    toks.append(Tok("eof", "", n + 1))
    return toks


# --- AST -------------------------------------------------------------------------------------------------
@dataclass
class Cmp:
    field: Field | None  # None for logtype
    op: str  # = != < <= > >= contains startswith endswith in exists empty
    values: list[str | float | int | bool]
    negate: bool
    col: int
    quoted: bool = True


@dataclass
class Logic:
    op: str  # and | or
    items: list


@dataclass
class Not:
    item: object


@dataclass
class Agg:
    func: str  # count | count_distinct | sum | min | max | avg | sd | distinct | percentile | ratio
    field: Field | None
    col: int
    level: float = 0.0  # percentile: 0..100
    conds: tuple = ()  # ratio: (numerator condition, denominator condition)
    text: str = ""  # ratio: the arguments as typed (the column's name)
    before: bool = False  # having/sort: the earlier period's value (count_before)

    @property
    def name(self) -> str:
        if self.func == "count" and self.field is None:
            base = "count"
        elif self.func == "percentile":
            base = f"percentile({self.field.name}, {self.level:g})"
        elif self.func == "ratio":
            base = f"ratio({self.text})"
        else:
            base = f"{self.func}({self.field.name})"
        return base + ("_before" if self.before else "")


@dataclass
class HavingCmp:
    agg: Agg
    op: str  # = != < <= > >=
    value: float
    col: int


@dataclass
class SortKey:
    name: str
    desc: bool
    col: int
    agg: Agg | None = None  # sort by an aggregate (shown or not)


@dataclass
class Query:
    where: object | None = None
    groupby: list[Field] = field(default_factory=list)
    aggs: list[Agg] = field(default_factory=list)
    timeslice: int | None = None
    include: list[tuple[Field, int]] = field(default_factory=list)
    exclude: list[tuple[Field | str, int]] = field(default_factory=list)
    before: int | None = None
    sort: list[SortKey] = field(default_factory=list)
    limit: int | None = None
    has_groupby: bool = False
    count_listed: bool = False  # `count` written as an aggregate (alone or in a list)
    having: object | None = None  # Logic / Not / HavingCmp over aggregates
    top: int | None = None
    top_by: Agg | None = None
    top_col: int = 0

    @property
    def is_aggregate(self) -> bool:
        return bool(self.has_groupby or self.timeslice or self.before or self.aggs or self.count_listed
                    or self.having is not None or self.top)  # fmt: skip


def duration_seconds(text: str) -> int | None:
    m = DURATION_RE.match(text.strip())
    return int(m.group(1)) * UNIT_SECONDS[m.group(2).lower()] if m else None


class Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    # helpers
    @property
    def tok(self) -> Tok:
        return self.toks[self.i]

    def next(self) -> Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def at_word(self, *words: str) -> bool:
        return self.tok.kind == "word" and self.tok.low in words

    def expect(self, kind: str, what: str) -> Tok:
        if self.tok.kind != kind:
            raise error_at(f"expected {what}, found {_show(self.tok)}", self.tok.col)
        return self.next()

    def field(self, tok: Tok | None = None) -> Field:
        tok = tok or self.next()
        if tok.kind != "word":
            raise error_at(f"expected a field name, found {_show(tok)}", tok.col)
        f = resolve(tok.value)
        if f is None:
            hint = suggest(tok.value)
            raise error_at(f'unknown field "{tok.value}"', tok.col, f'did you mean "{hint}"?' if hint else "")
        return f

    # grammar
    def parse(self) -> Query:
        q = Query()
        if self.tok.kind != "eof" and not self._at_clause():
            q.where = self.expr()
        while self.tok.kind != "eof":
            if self.at_word("and") and self._at_agg(self.i + 1):  # `verb=get and count_distinct(username)`
                self.next()
            if not self._at_clause():
                raise error_at(f"expected and, or, or a clause (groupby, timeslice, include, exclude, before, having, "
                               f"sort by, top, limit) or an aggregate (count, avg(f), ...), found {_show(self.tok)}",
                               self.tok.col)  # fmt: skip
            self.clause(q)
        return q

    def _at_agg(self, i: int | None = None) -> bool:
        """An aggregate starts at token i: count alone, or an aggregate name followed by "("."""
        i = self.i if i is None else i
        t, nxt = self.toks[i], self.toks[i + 1] if i + 1 < len(self.toks) else Tok("eof", "", 0)
        if t.kind != "word" or t.low not in AGGS:
            return False
        return nxt.kind == "(" or (t.low == "count" and nxt.kind != "op" and nxt.low not in STRING_OPS | {"in", "not", "is", "exists"})

    def _at_clause(self) -> bool:
        if self._at_agg():
            return True
        if not self.at_word(*CLAUSES):
            return False
        if self.tok.low in ("group", "sort", "order"):
            nxt = self.toks[self.i + 1]
            return nxt.kind == "word" and nxt.low == "by" or self.tok.low == "sort"
        return True

    def expr(self) -> object:
        items = [self.and_expr()]
        while self.at_word("or"):
            self.next()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Logic("or", items)

    def and_expr(self) -> object:
        items = [self.unary()]
        while self.at_word("and") and not self._at_agg(self.i + 1):
            self.next()
            items.append(self.unary())
        return items[0] if len(items) == 1 else Logic("and", items)

    def unary(self) -> object:
        t = self.tok
        if self.at_word("not"):
            self.next()
            return Not(self.unary())
        if t.kind == "(":
            self.next()
            inner = self.expr()
            self.expect(")", '")"')
            return inner
        if self.at_word("exists"):
            self.next()
            return Cmp(self.field(), "exists", [], False, t.col)
        if t.kind == "eof":
            raise error_at("the query ends where a condition was expected", t.col)
        return self.predicate()

    def predicate(self) -> Cmp:
        ftok = self.next()
        if ftok.kind != "word":
            raise error_at(f"expected a field name, found {_show(ftok)}", ftok.col)
        f = None if ftok.low == "logtype" else self.field(ftok)
        negate = False
        if self.at_word("not"):
            self.next()
            negate = True
        t = self.tok
        if t.kind == "op" and not negate:
            self.next()
            v, quoted = self.value()
            return Cmp(f, t.value, [v], False, ftok.col, quoted)
        if self.at_word(*STRING_OPS):
            self.next()
            v, quoted = self.value()
            return Cmp(f, t.low, [v], negate, ftok.col, quoted)
        if self.at_word("in"):
            self.next()
            self.expect("(", '"(" after in')
            vals = [self.value()[0]]
            while self.tok.kind == ",":
                self.next()
                vals.append(self.value()[0])
            self.expect(")", '")" closing the in list')
            return Cmp(f, "in", vals, negate, ftok.col)
        if self.at_word("exists"):
            self.next()
            return Cmp(f, "exists", [], negate, ftok.col)
        if self.at_word("is") and not negate:
            self.next()
            if self.at_word("not"):
                self.next()
                negate = True
            if not self.at_word("empty", "null"):
                raise error_at(f'expected "empty" after "is", found {_show(self.tok)}', self.tok.col)
            self.next()
            return Cmp(f, "empty", [], negate, ftok.col)
        raise error_at(f"expected an operator (=, !=, <, <=, >, >=, contains, startswith, endswith, in, exists, "
                       f"is empty) after {ftok.value}, found {_show(t)}", t.col)  # fmt: skip

    def value(self) -> tuple[str, bool]:
        t = self.tok
        if t.kind == "str":
            self.next()
            return t.value, True
        if t.kind == "word" and t.low not in ("and", "or") and not self._at_clause():
            self.next()
            return t.value, False
        raise error_at(f"expected a value, found {_show(t)}", t.col)

    def clause(self, q: Query) -> None:
        if self._at_agg():  # aggregates without groupby: `count`, `count_distinct(username), avg(latency)`
            for item in self.list_items(aggs_only=True):
                self._add_agg(q, item)
            return
        t = self.next()
        kw = t.low
        if kw in ("group", "order"):
            self.next()  # by
            kw = "groupby" if kw == "group" else "sort"
        if kw == "groupby":
            if q.has_groupby:
                raise error_at("groupby given twice", t.col)
            q.has_groupby = True
            for item in self.list_items():
                if isinstance(item, Agg):
                    self._add_agg(q, item)
                else:
                    q.groupby.append(item)
        elif kw == "timeslice":
            d = self.next()
            secs = duration_seconds(d.value) if d.kind in ("word", "str") else None
            if not secs:
                raise error_at(f"expected a duration like 5m, 1h or 1d after timeslice, found {_show(d)}", d.col)
            q.timeslice = secs
        elif kw in ("include", "exclude"):
            fields = []
            while True:
                ft = self.next()
                if kw == "exclude" and ft.kind == "word" and (ft.low in AGGS or ft.low.endswith("_before")):
                    if self.tok.kind == "(":  # exclude count_distinct(x)
                        self.i -= 1
                        fields.append((self.agg_item().name, ft.col))
                    else:
                        fields.append((ft.low, ft.col))
                else:
                    fields.append((self.field(ft), ft.col))
                if self.tok.kind != ",":
                    break
                self.next()
            (q.include if kw == "include" else q.exclude).extend(fields)
        elif kw == "before":
            d = self.next()
            secs = duration_seconds(d.value) if d.kind in ("word", "str") else None
            if not secs:
                raise error_at(f"expected a duration like 1d or 7d after before, found {_show(d)}", d.col)
            q.before = secs
        elif kw == "sort":
            if self.at_word("by"):
                self.next()
            while True:
                k = self.next()
                if k.kind not in ("word", "str"):
                    raise error_at(f"expected a field to sort by, found {_show(k)}", k.col)
                name, agg = k.value, None
                if self.tok.kind == "(" or (k.kind == "word" and k.low in ("count", "count_before")):
                    self.i -= 1  # sort by avg(latency), sort by count
                    agg = self.agg_ref()
                    name = agg.name
                desc = True
                if self.at_word("asc", "desc"):
                    desc = self.next().low == "desc"
                q.sort.append(SortKey(name, desc, k.col, agg))
                if self.tok.kind != ",":
                    break
                self.next()
        elif kw == "having":
            if q.having is not None:
                raise error_at("having given twice", t.col)
            q.having = self.having_expr()
        elif kw == "top":
            n = self.next()
            if n.kind != "word" or not n.value.isdigit() or int(n.value) <= 0:
                raise error_at(f"expected a positive number after top, found {_show(n)}", n.col)
            q.top, q.top_col = int(n.value), t.col
            if self.at_word("by"):
                self.next()
                if not self._at_agg():
                    raise error_at(f"expected an aggregate after top {n.value} by (count, avg(latency), ...), "
                                   f"found {_show(self.tok)}", self.tok.col)  # fmt: skip
                q.top_by = self.agg_item()
        elif kw == "limit":
            n = self.next()
            if n.kind != "word" or not n.value.isdigit() or int(n.value) <= 0:
                raise error_at(f"expected a positive number after limit, found {_show(n)}", n.col)
            q.limit = int(n.value)
        else:  # pragma: no cover - _at_clause guards this
            raise error_at(f"unknown clause {t.value}", t.col)

    @staticmethod
    def _add_agg(q: Query, item: Agg) -> None:
        if item.name == "count":
            q.count_listed = True
        elif item.name not in {a.name for a in q.aggs}:
            q.aggs.append(item)

    # having: comparisons of aggregates with numbers, combined with and/or/not/( )
    def having_expr(self) -> object:
        items = [self.having_and()]
        while self.at_word("or"):
            self.next()
            items.append(self.having_and())
        return items[0] if len(items) == 1 else Logic("or", items)

    def having_and(self) -> object:
        items = [self.having_unary()]
        while self.at_word("and"):
            self.next()
            items.append(self.having_unary())
        return items[0] if len(items) == 1 else Logic("and", items)

    def having_unary(self) -> object:
        t = self.tok
        if self.at_word("not"):
            self.next()
            return Not(self.having_unary())
        if t.kind == "(":
            self.next()
            inner = self.having_expr()
            self.expect(")", '")"')
            return inner
        agg = self.agg_ref()
        op = self.tok
        if op.kind != "op":
            raise error_at(f"expected a comparison (>, >=, <, <=, =, !=) after {agg.name}, found {_show(op)}", op.col)
        self.next()
        v = self.next()
        try:
            num = float(v.value) if v.kind in ("word", "str") else None
        except ValueError:
            num = None
        if num is None or num != num:
            raise error_at(f"expected a number after {agg.name} {op.value}, found {_show(v)}", v.col)
        return HavingCmp(agg, op.value, num, t.col)

    def agg_ref(self) -> Agg:
        """An aggregate in having/sort: count, count_before, avg(latency), avg(latency)_before, ..."""
        t = self.tok
        if t.kind == "word" and t.low in ("count", "count_before") and self.toks[self.i + 1].kind != "(":
            self.next()
            return Agg("count", None, t.col, before=t.low == "count_before")
        if not self._at_agg():
            raise error_at(f"expected an aggregate (count, count_distinct(f), avg(f), ...), found {_show(t)}", t.col)
        a = self.agg_item()
        if self.tok.kind == "word" and self.tok.low == "_before":
            self.next()
            a.before = True
        return a

    def list_items(self, aggs_only: bool = False) -> list[Field | Agg]:
        items: list[Field | Agg] = []
        while True:
            if self._at_agg():
                items.append(self.agg_item())
            elif aggs_only:
                raise error_at(f"expected an aggregate (count, count_distinct(f), avg(f), ...), found {_show(self.tok)}; "
                               f"fields go after groupby", self.tok.col)  # fmt: skip
            else:
                items.append(self.field())
            if self.tok.kind != ",":
                return items
            self.next()

    def agg_item(self) -> Agg:
        t = self.next()
        func = t.low
        if func == "count" and self.tok.kind != "(":
            return Agg("count", None, t.col)
        self.expect("(", f'"(" after {func}')
        if func == "count" and self.tok.kind == ")":
            self.next()
            return Agg("count", None, t.col)
        if func == "ratio":
            start = self.tok.col
            first = self.expr()
            self.expect(",", '"," between the two conditions of ratio(a, b)')
            second = self.expr()
            end = self.tok.col
            self.expect(")", '")" closing ratio(')
            text = " ".join(self.text[start - 1 : end - 1].split())
            return Agg("ratio", None, t.col, conds=(first, second), text=text)
        ftok = self.tok
        f = self.field()
        level = 0.0
        if func == "percentile":
            self.expect(",", '"," and a percentile after the field, e.g. percentile(latency, 99)')
            pt = self.next()
            try:
                level = float(pt.value) if pt.kind == "word" else -1.0
            except ValueError:
                level = -1.0
            if not 0 <= level <= 100:
                raise error_at(f"expected a percentile between 0 and 100, found {_show(pt)}", pt.col)
        self.expect(")", f'")" closing {func}(')
        if func == "stddev":
            func = "sd"
        if func in ("sum", "avg", "sd", "percentile") and f.kind != "number":
            raise error_at(f'{func}() needs a numeric field such as responsestatus_code or latency, not "{f.name}"',
                           ftok.col)  # fmt: skip
        if func in ("min", "max") and f.kind not in ("number", "time", "string"):
            raise error_at(f'{func}() needs a numeric, time or text field, not "{f.name}"', ftok.col)
        if func == "count":
            func = "count_distinct"
        return Agg(func, f, t.col, level=level)


def _show(t: Tok) -> str:
    if t.kind == "eof":
        return "the end of the query"
    return f'"{t.value}"'


def parse(text: str) -> Query:
    return Parser(text).parse()
