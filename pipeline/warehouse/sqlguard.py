"""The read side's guard: ClickHouse's own parser decides what a user's SQL statement touches.

Text matching is not a sandbox (``FiLe(...)``, quoting, comments, ``view()``, ``merge()``, dictionaries, ``INTO
OUTFILE``, ``SETTINGS`` ... all slipped past the old regular expressions). Instead the statement goes to the same
engine that will run it, as a bound *parameter* (so nothing in it can execute):

    SELECT formatQuerySingleLine({q:String}) AS c, parseQueryToJSON(c), currentDatabase(), <tables of that db>

``c`` is the engine's canonical text of the statement (one statement or a syntax error, no comments) and
``parseQueryToJSON(c)`` its typed AST. The AST is walked with allow-lists only:

- one SELECT statement (UNION / INTERSECT / EXCEPT, subqueries, CTEs, joins, window functions, ARRAY JOIN);
- tables: kaudit's own (``READABLE_TABLES``), bare or qualified with the current database, and CTE names in scope;
- functions: ``SCALAR_FUNCTIONS`` and ``AGGREGATE_FUNCTIONS`` (with combinators such as ``-If``, ``-State``); no
  table function at all (``numbers()`` included: ``range()`` and ``arrayJoin`` are there, under the limits);
- no ``SETTINGS``, ``FORMAT``, ``INTO OUTFILE``, ``COMPRESSION``; no AST node type outside ``NODE_TYPES``.

What is executed is ``c`` itself, i.e. exactly the text whose AST was checked, with the read limits of
``limits_from`` appended by the client (``max_execution_time``, memory, rows/bytes read, result rows/bytes with
``result_overflow_mode=throw``, ``readonly=1``). ``scope_to_clusters`` confines a checked statement to a set of
clusters through the AST (see its docstring). On a ClickHouse server the same checks run with the server's parser,
and ``reader_user_sql`` writes the read-only user/profile/grants the reader should connect with.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# --- what may be read -----------------------------------------------------------------------------------------
# Tables with a ``cluster`` column: the ones scope_to_clusters can confine (migrations.py creates them).
CLUSTER_TABLES = frozenset({"audit_events", "verb_stats", "status_stats", "alerts", "events_1m", "volume_1h"})
# Readable by an unscoped (admin) statement as well: the rollup's materialized view and the migrations log.
READABLE_TABLES = CLUSTER_TABLES | {"events_1m_mv", "kaudit_migrations"}

# AST node types (parseQueryToJSON's "type") a read statement is made of; anything else is refused.
NODE_TYPES = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList", "TablesInSelectQuery",
    "TablesInSelectQueryElement", "TableExpression", "TableJoin", "TableIdentifier", "ArrayJoin", "Subquery",
    "WithElement", "Identifier", "Function", "Literal", "OrderByElement", "InterpolateElement",
    "SampleRatio", "WindowDefinition", "WindowListElement", "Asterisk", "QualifiedAsterisk", "ColumnsRegexpMatcher",
    "ColumnsListMatcher", "QualifiedColumnsRegexpMatcher", "QualifiedColumnsListMatcher", "ColumnsTransformerList",
    "ColumnsExceptTransformer", "ColumnsReplaceTransformer", "ColumnsReplaceTransformerReplacement",
    "ColumnsApplyTransformer",
})  # fmt: skip
# Keys of a node that carry clauses a reader may not use: kaudit sets the settings and the output itself.
FORBIDDEN_KEYS = {
    "settings": "a SETTINGS clause (kaudit sets the limits and settings of every read)",
    "format_ast": "a FORMAT clause (the API answers JSON; the CLI has --format)",
    "out_file": "INTO OUTFILE",
    "compression": "COMPRESSION",
}
IN_FUNCTIONS = frozenset({"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn",
                          "globalNotNullIn", "inIgnoreSet"})  # fmt: skip


def _is_in(name: Any) -> bool:
    """An IN-family function, in any letter case (`IN(x, t)` does not read t today; refuse more, never less)."""
    return isinstance(name, str) and name.lower() in _IN_LOWER


_IN_LOWER = frozenset(f.lower() for f in IN_FUNCTIONS)

# Scalar functions for analysing audit events: pure functions of their arguments (no I/O, no dictionaries, no
# settings or server introspection, no sleeping). Operators appear under their function names (plus, equals, ...).
SCALAR_FUNCTIONS = frozenset("""
plus minus multiply divide intDiv intDivOrZero modulo moduloOrZero positiveModulo negate abs gcd lcm
equals notEquals less greater lessOrEquals greaterOrEquals and or not xor isNull isNotNull isNotDistinctFrom
ifNull nullIf coalesce assumeNotNull toNullable isZeroOrNull if multiIf caseWithExpression
in notIn globalIn globalNotIn nullIn notNullIn
like notLike ilike notILike match multiMatchAny multiMatchAnyIndex multiSearchAny multiSearchFirstIndex
position positionCaseInsensitive positionUTF8 locate countSubstrings countMatches extract extractAll
extractGroups extractAllGroups extractAllGroupsHorizontal extractAllGroupsVertical regexpExtract
replaceOne replaceAll replaceRegexpOne replaceRegexpAll translate translateUTF8
exists grouping materialize transform bar toDecimal32 arrayEnumerateDense
lambda tuple tupleElement array arrayElement map mapKeys mapValues mapContains mapContainsKeyLike
mapExtractKeyLike mapFilter mapApply mapFromArrays mapSort
length lengthUTF8 empty notEmpty lower upper lowerUTF8 upperUTF8 reverse reverseUTF8 concat concatWithSeparator
substring substringUTF8 left right leftUTF8 rightUTF8 trim trimLeft trimRight trimBoth ltrim rtrim
startsWith endsWith startsWithUTF8 endsWithUTF8 splitByChar splitByString splitByRegexp splitByWhitespace
splitByNonAlpha arrayStringConcat format repeat leftPad rightPad lpad rpad toValidUTF8 hasToken hasTokenCaseInsensitive
base64Encode base64Decode tryBase64Decode hex unhex bin normalizeUTF8NFC
domain domainWithoutWWW topLevelDomain protocol path pathFull queryString fragment cutQueryString
extractURLParameter extractURLParameters extractURLParameterNames decodeURLComponent encodeURLComponent
cutToFirstSignificantSubdomain firstSignificantSubdomain
toString toFixedString toInt8 toInt16 toInt32 toInt64 toUInt8 toUInt16 toUInt32 toUInt64 toFloat32 toFloat64
toInt64OrZero toInt64OrNull toUInt64OrZero toUInt64OrNull toFloat64OrZero toFloat64OrNull toInt32OrZero
toInt32OrNull toUInt32OrZero toUInt32OrNull toDecimal64 toBool CAST _CAST accurateCast accurateCastOrNull
reinterpretAsString reinterpretAsUInt128 toTypeName toUUID toUUIDOrNull toIPv4 toIPv6 toIPv4OrNull toIPv6OrNull
IPv4NumToString IPv4StringToNum IPv6NumToString IPv6StringToNum isIPv4String isIPv6String isIPAddressInRange
IPv4CIDRToRange IPv6CIDRToRange toIPv4OrDefault
now now64 today yesterday toDate toDate32 toDateTime toDateTime64 toDateOrNull toDateTimeOrNull
toDateTime64OrNull parseDateTimeBestEffort parseDateTimeBestEffortOrNull parseDateTime64BestEffort
parseDateTime64BestEffortOrNull parseDateTime parseDateTimeOrNull toYear toQuarter toMonth toDayOfYear
toDayOfMonth toDayOfWeek toHour toMinute toSecond toUnixTimestamp toUnixTimestamp64Micro toUnixTimestamp64Milli
fromUnixTimestamp fromUnixTimestamp64Micro fromUnixTimestamp64Milli toStartOfYear toStartOfQuarter
toStartOfMonth toStartOfWeek toMonday toStartOfDay toStartOfHour toStartOfMinute toStartOfSecond
toStartOfFiveMinutes toStartOfTenMinutes toStartOfFifteenMinutes toStartOfInterval toTimeZone toTime
toYYYYMM toYYYYMMDD toYYYYMMDDhhmmss formatDateTime formatDateTimeInJodaSyntax dateName dateTrunc date_trunc
dateDiff date_diff dateAdd date_add dateSub date_sub addSeconds addMinutes addHours addDays addWeeks
addMonths addYears subtractSeconds subtractMinutes subtractHours subtractDays subtractWeeks subtractMonths
subtractYears timeSlot timeSlots age toIntervalSecond toIntervalMinute toIntervalHour toIntervalDay
toIntervalWeek toIntervalMonth toIntervalQuarter toIntervalYear toIntervalMillisecond toIntervalMicrosecond
timestamp_diff formatReadableSize formatReadableQuantity formatReadableTimeDelta
round roundDown roundToExp2 floor ceil trunc truncate sqrt cbrt exp exp2 exp10 log ln log2 log10 pow power
greatest least sign intExp2 intExp10 pi e
has hasAll hasAny hasSubstr indexOf countEqual arrayCount arrayExists arrayAll arrayFilter arrayMap arraySort
arrayReverseSort arrayDistinct arrayUniq arrayEnumerate arrayEnumerateUniq arrayConcat arraySlice arrayPushBack
arrayPushFront arrayPopBack arrayPopFront arrayResize arrayFlatten arrayCompact arrayZip arrayIntersect
arrayReduce arrayFirst arrayLast arrayFirstIndex arrayLastIndex arraySum arrayMin arrayMax arrayAvg
arrayProduct arrayCumSum arrayDifference arrayJoin arrayStringConcat arrayReverse arraySplit arrayFold
arrayElementOrNull emptyArrayString emptyArrayUInt64 range
JSONExtract JSONExtractString JSONExtractInt JSONExtractUInt JSONExtractFloat JSONExtractBool JSONExtractRaw
JSONExtractKeys JSONExtractArrayRaw JSONExtractKeysAndValues JSONExtractKeysAndValuesRaw JSONHas JSONLength
JSONType isValidJSON JSON_VALUE JSON_QUERY JSON_EXISTS simpleJSONExtractString simpleJSONExtractRaw
simpleJSONHas simpleJSONExtractInt simpleJSONExtractUInt simpleJSONExtractBool simpleJSONExtractFloat
toJSONString
cityHash64 sipHash64 sipHash128 xxHash64 xxh3 murmurHash3_64 farmHash64 MD5 SHA1 SHA256 hex halfMD5
bitAnd bitOr bitXor bitNot bitShiftLeft bitShiftRight bitCount
row_number rank dense_rank percent_rank cume_dist ntile lagInFrame leadInFrame first_value last_value
nth_value lag lead
""".split())

# Aggregate functions, also accepted with combinators (sumIf, uniqExactIf, groupArrayState, countDistinct ...).
AGGREGATE_FUNCTIONS = frozenset("""
count sum avg min max any anyLast anyHeavy argMin argMax uniq uniqExact uniqCombined uniqCombined64 uniqHLL12
uniqTheta countDistinct groupArray groupArraySample groupUniqArray groupArraySorted groupBitAnd groupBitOr
groupBitXor groupConcat topK topKWeighted quantile quantiles quantileExact quantilesExact quantileExactInclusive
quantilesExactInclusive quantileTiming
quantilesTiming quantileTDigest quantilesTDigest quantileDeterministic median medianExact stddevPop
stddevSamp varPop varSamp covarPop covarSamp corr skewPop kurtPop sumMap minMap maxMap avgWeighted
histogram simpleLinearRegression sequenceMatch sequenceCount windowFunnel retention first_value last_value
any_value singleValueOrNull boundingRatio rankCorr entropy mode
""".split())
COMBINATORS = ("If", "Array", "Map", "State", "Merge", "MergeState", "ForEach", "Distinct", "OrDefault", "OrNull",
               "Resample", "ArgMin", "ArgMax", "SimpleState")  # fmt: skip

_LOWER_FUNCTIONS = {f.lower(): f for f in SCALAR_FUNCTIONS | AGGREGATE_FUNCTIONS}


class ReadOnlyError(ValueError):
    """The statement was refused: it would write, or read something other than kaudit's tables."""

    def __init__(self, message: str, offending: str | None = None) -> None:
        super().__init__(message)
        self.offending = offending


class LimitExceeded(RuntimeError):
    """A read stopped at one of the limits (the ClickHouse setting named by ``limit``)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass
class Checked:
    """A statement the guard accepted: ``sql`` is what to execute (the engine's canonical text of it)."""

    sql: str
    ast: dict[str, Any]
    database: str
    tables: set[str] = field(default_factory=set)  # the kaudit tables it reads (unqualified names)
    functions: set[str] = field(default_factory=set)


# A callable that runs one of the guard's own SQL statements with bound parameters and returns rows.
Runner = Callable[[str, dict[str, Any]], list[list[Any]]]

_CHECK_SQL = "SELECT formatQuerySingleLine({q:String}) AS c, parseQueryToJSON(c), currentDatabase()"
# The tables of the current database (for check_statement's ``existing``), where the engine lets us see them.
EXISTING_TABLES_SQL = "SELECT name FROM system.tables WHERE database = currentDatabase()"


def function_allowed(name: str) -> bool:
    """True for allow-listed scalar/aggregate functions (case-insensitive, as ClickHouse resolves many names)."""
    canon = name if name in SCALAR_FUNCTIONS or name in AGGREGATE_FUNCTIONS else _LOWER_FUNCTIONS.get(name.lower())
    if canon is not None:
        return True
    base = name
    for _ in range(4):  # sumIfOrNull, uniqExactStateIf ...: strip combinators from the end
        for comb in COMBINATORS:
            if base.endswith(comb) and len(base) > len(comb):
                base = base[: -len(comb)]
                break
        else:
            break
        if base in AGGREGATE_FUNCTIONS:
            return True
    return False


def check_statement(
    run: Runner, sql: str, tables: Iterable[str] = READABLE_TABLES, existing: Iterable[str] = ()
) -> Checked:
    """Parse ``sql`` with the engine behind ``run`` and return the Checked statement, or raise ReadOnlyError.

    ``run(sql, params)`` must execute on the same engine (and database) that will run the statement.
    ``existing``: table names of the current database (EXISTING_TABLES_SQL); a CTE may not be named like one of
    them that is not allowed (a backstop: CTE scopes are resolved like ClickHouse does, or more narrowly)."""
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise ReadOnlyError("empty statement")
    try:
        rows = run(_CHECK_SQL, {"q": text})
    except Exception as exc:  # noqa: BLE001 - the parser says why (syntax error, multi-statements, ...)
        raise ReadOnlyError(_first_line(exc)) from None
    canonical, ast_json, database = rows[0]
    ast = json.loads(ast_json)
    walker = _Walker(database, frozenset(tables), frozenset(existing))
    walker.statement(ast)
    return Checked(sql=canonical, ast=ast, database=database, tables=walker.tables, functions=walker.functions)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^.*?Code: (\d+)\. DB::Exception: ", r"Code \1: ", text)
    text = re.sub(r": In scope SELECT formatQuerySingleLine.*$", "", text)
    return text[:500]


class _Walker:
    """Walks parseQueryToJSON's AST with allow-lists; raises ReadOnlyError naming the first offending thing."""

    def __init__(self, database: str, tables: frozenset[str], existing: frozenset[str]) -> None:
        self.database = database
        self.allowed = tables
        self.existing = existing  # tables of the current database: a CTE name may not shadow one we refuse
        self.tables: set[str] = set()
        self.functions: set[str] = set()

    def statement(self, ast: Any) -> None:
        kind = ast.get("type") if isinstance(ast, dict) else None
        if kind != "SelectWithUnionQuery":
            raise ReadOnlyError(f"only SELECT statements are allowed (with UNION, subqueries, CTEs); got {kind}",
                                kind)  # fmt: skip
        self.node(ast, frozenset())

    def node(self, n: Any, ctes: frozenset[str]) -> None:
        if isinstance(n, list):
            for x in n:
                self.node(x, ctes)
            return
        if not isinstance(n, dict):
            return
        kind = n.get("type")
        if kind not in NODE_TYPES:
            raise ReadOnlyError(f"{kind or 'this construct'} is not allowed in a read statement", kind)
        for key, what in FORBIDDEN_KEYS.items():
            if key in n:
                raise ReadOnlyError(f"{what} is not allowed", key.upper())
        if kind == "Literal":
            return  # a value: nothing in it is executed
        if kind == "SelectQuery":
            names = {w["name"] for w in (n.get("with") or {}).get("children", ()) if w.get("type") == "WithElement"}
            clash = names & (self.existing - self.allowed)
            if clash:
                raise ReadOnlyError(f"a CTE may not be named like the table {sorted(clash)[0]}", sorted(clash)[0])
            ctes = ctes | names
        elif kind == "TableExpression":
            if "table_function" in n:
                fn = n["table_function"].get("name", "?")
                raise ReadOnlyError(f"table function {fn}() is not allowed: kaudit SQL reads only kaudit's tables "
                                    f"({', '.join(sorted(self.allowed))})", fn)  # fmt: skip
        elif kind == "TableIdentifier":
            self.table(n, ctes)
        elif kind == "Function":
            self.function(n, ctes)
        elif kind == "ColumnsApplyTransformer" and n.get("func_name") and not function_allowed(n["func_name"]):
            raise ReadOnlyError(f"function {n['func_name']} is not allowed", n["func_name"])
        for value in n.values():
            if isinstance(value, dict | list):
                self.node(value, ctes)

    def table(self, n: dict[str, Any], ctes: frozenset[str]) -> None:
        parts = n.get("name_parts") or [n.get("name", "")]
        if len(parts) == 1 and parts[0] in ctes:
            return
        name = ".".join(parts)
        if len(parts) == 2 and parts[0] == self.database:
            parts = parts[1:]
        if len(parts) != 1 or parts[0] not in self.allowed:
            raise ReadOnlyError(f"table {name} is not allowed: kaudit SQL reads only kaudit's tables "
                                f"({', '.join(sorted(self.allowed))})", name)  # fmt: skip
        self.tables.add(parts[0])

    def function(self, n: dict[str, Any], ctes: frozenset[str]) -> None:
        name = n.get("name", "")
        if not function_allowed(name):
            raise ReadOnlyError(f"function {name}() is not allowed in kaudit SQL", name)
        self.functions.add(name)
        args0 = (n.get("arguments") or {}).get("children") or []
        if name.lower() == "arrayreduce":  # the aggregate is named by a string: it must be an allowed one
            first = args0[0] if args0 else {}
            value = (first.get("value") or {}) if first.get("type") == "Literal" else {}
            agg = value.get("value") if value.get("field_type") == "String" else None
            if not (isinstance(agg, str) and function_allowed(agg) and agg not in SCALAR_FUNCTIONS):
                raise ReadOnlyError(f"arrayReduce with {agg or 'a computed name'} is not allowed", str(agg))
        if _is_in(name):  # `x IN t`: an identifier on the right names a table
            args = (n.get("arguments") or {}).get("children") or []
            if len(args) == 2 and isinstance(args[1], dict) and args[1].get("type") == "Identifier":
                self.table(args[1], ctes)


# --- limits -----------------------------------------------------------------------------------------------------
LIMIT_SETTINGS = ("max_execution_time", "max_memory_usage", "max_rows_to_read", "max_bytes_to_read",
                  "max_result_rows", "max_result_bytes")  # fmt: skip


def limits_from(s: Any, reader_profile: bool = False) -> dict[str, Any]:
    """ClickHouse settings every read runs under (API, dashboard, CLI; raw SQL and compiled queries alike).

    readonly=1 per query refuses writes without touching the session the sink writes with, and makes the engine
    itself refuse the table functions that reach the host (file, url, s3, executable, ...: they need temporary
    tables), a second layer under the parser check (it does not stop INTO OUTFILE, which the client writes; the
    guard does). The limits are listed before it in the SETTINGS clause the client appends. Every
    ``*_overflow_mode`` is ``throw`` so that a limit is an error naming it, never a silently cut answer.
    0 disables a limit.
    ``reader_profile``: the server's reader user (``reader_user_sql``) already has readonly=1 and the overflow modes
    as constants in its profile; only the limits are sent (its profile lets them be lowered, never raised)."""
    out: dict[str, Any] = {} if reader_profile else {
        "result_overflow_mode": "throw", "read_overflow_mode": "throw", "timeout_overflow_mode": "throw"
    }  # fmt: skip
    for name in LIMIT_SETTINGS:
        out[name] = int(getattr(s, f"query_{name}"))
    if not reader_profile:
        out["readonly"] = 1
    return out


_LIMIT_BY_CODE = {159: "max_execution_time", 241: "max_memory_usage", 158: "max_rows_to_read",
                  307: "max_bytes_to_read", 396: "max_result_rows"}  # fmt: skip


def limit_error(exc: BaseException) -> LimitExceeded | None:
    """The LimitExceeded an engine error stands for (a read stopped at a limit), or None for any other error."""
    text = str(exc).strip()
    m = re.search(r"Code: (\d+)\.", text)
    code = int(m.group(1)) if m else 0
    if code not in _LIMIT_BY_CODE:
        return None
    named = re.search(r"controlled by '(\w+)'", text)
    limit = named.group(1) if named else _LIMIT_BY_CODE[code]
    if code == 396 and "max bytes" in text:
        limit = "max_result_bytes"
    detail = re.sub(r"^.*?DB::Exception: ", "", text.splitlines()[0] if text else "")[:300]
    return LimitExceeded(limit, f"the query stopped at the limit {limit}: {detail}")


# --- confinement to clusters ---------------------------------------------------------------------------------------
def scope_to_clusters(
    run: Runner, checked: Checked, clusters: Iterable[str], existing: Iterable[str] = ()
) -> tuple[str, dict[str, Any]]:
    """Confine a checked statement to ``clusters``: returns (sql, settings) to execute together.

    Contract:
    - ``checked`` must come from ``check_statement`` on the same engine (its AST is what is rewritten).
    - Every reference to a table of ``CLUSTER_TABLES`` (bare or ``db.``-qualified, any quoting, any alias, in
      joins, subqueries, CTE bodies, UNION branches, ``IN t``) is replaced in the AST by the subquery
      ``(SELECT * FROM db.t WHERE cluster IN (...))`` under the same alias (or the table's name when it had none,
      so ``t.column`` still resolves); the SQL is rebuilt from the AST by the engine (formatQueryFromJSON), parsed
      again and re-checked: the guard must accept it and every table reference in it must sit in exactly such a
      confining subquery, else ReadOnlyError.
    - The returned settings add ``additional_table_filters`` with the same predicate on every cluster table, so the
      engine filters every read of those tables a second time, whatever the rewrite missed.
    - The settings also keep the reader's expressions from running on other clusters' rows (NO_EARLY_EVALUATION),
      so that an error cannot reveal them; PREWHERE is refused for the same reason.
    - A statement reading a table that cannot be confined (no ``cluster`` column: ``kaudit_migrations``,
      ``events_1m_mv``) is refused; an empty ``clusters`` yields a statement that returns no rows. Never widens.
    """
    wanted = sorted({str(c) for c in clusters})
    bad = checked.tables - CLUSTER_TABLES
    if bad:
        raise ReadOnlyError(f"table {sorted(bad)[0]} cannot be confined to clusters", sorted(bad)[0])
    ast = copy.deepcopy(checked.ast)
    _Scoper(checked.database, wanted).node(ast, frozenset())
    try:
        rows = run("SELECT formatQueryFromJSON({j:String})", {"j": json.dumps(ast)})
    except Exception as exc:  # noqa: BLE001
        raise ReadOnlyError(f"cannot confine this statement to clusters: {_first_line(exc)}") from None
    rebuilt = rows[0][0]
    again = check_statement(run, rebuilt, CLUSTER_TABLES, existing)
    _verify_scoped(again.ast, checked.database, wanted)
    return again.sql, {**cluster_filters(checked.database, wanted), **NO_EARLY_EVALUATION, **SCOPED_COLUMNS}


# The confining subquery's SELECT * would leave out MATERIALIZED columns (audit_events.latency_us), which a
# reader may name: with this setting they pass through it (and a scoped SELECT * shows them).
SCOPED_COLUMNS: dict[str, Any] = {"asterisk_include_materialized_columns": 1}

# A scoped reader's expressions must only ever see rows of its clusters: were a predicate of theirs moved to
# PREWHERE or pushed into the confining subquery, it would run on other clusters' rows too, and an error it raises
# there (intDiv by zero, a failed cast) would tell them those rows exist (measured: 10 of 14 such probes leaked
# without these settings, none with them; tests/test_warehouse_sqlguard.py).
NO_EARLY_EVALUATION: dict[str, Any] = {"optimize_move_to_prewhere": 0, "query_plan_filter_push_down": 0,
                                       "enable_optimize_predicate_expression": 0}  # fmt: skip


def cluster_filters(database: str, clusters: Iterable[str]) -> dict[str, Any]:
    """Settings that make the engine filter every read of a cluster table of ``database`` to ``clusters``.

    For trusted SQL (compiled query-language queries, dashboard widgets): ``Warehouse.query(sql, params,
    settings=cluster_filters(...))``. Never for a user's raw SQL alone (a SETTINGS clause in it could override
    them: use scope_to_clusters, whose statement the guard has checked)."""
    pred = _cluster_predicate(sorted({str(c) for c in clusters}))
    return {"additional_table_filters": _map_literal({f"{database}.{t}": pred for t in sorted(CLUSTER_TABLES)})}


def _cluster_predicate(clusters: list[str]) -> str:
    if not clusters:
        return "0"
    return "cluster IN (" + ", ".join(_sql_string(c) for c in clusters) + ")"


def _sql_string(v: str) -> str:
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _map_literal(m: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{_sql_string(k)}: {_sql_string(v)}" for k, v in m.items()) + "}"


MODIFIERS = ("final", "sample_size", "sample_offset")  # table modifiers: they move into the confining subquery


def _scoping_subquery(database: str, table: str, clusters: list[str], alias: str | None,
                      modifiers: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The AST of ``(SELECT * FROM database.table [FINAL] [SAMPLE ..] WHERE cluster IN (clusters)) AS alias``."""
    where: dict[str, Any]
    column = {"type": "Identifier", "name": "cluster"}
    if len(clusters) == 1:  # a one-element tuple would be formatted as ('x'), a plain string: use equals
        where = {"type": "Function", "name": "equals", "is_operator": True, "arguments": {"type": "ExpressionList",
                 "children": [column, {"type": "Literal", "value": {"field_type": "String", "value": clusters[0]}}]}}
    elif clusters:
        where = {"type": "Function", "name": "in", "is_operator": True, "arguments": {"type": "ExpressionList",
                 "children": [column, {"type": "Literal", "value": {"field_type": "Tuple", "value": [
                     {"field_type": "String", "value": c} for c in clusters]}}]}}  # fmt: skip
    else:
        where = {"type": "Literal", "value": {"field_type": "UInt64", "value": 0}}
    select = {"type": "SelectQuery",
              "select": {"type": "ExpressionList", "children": [{"type": "Asterisk"}]},
              "tables": {"type": "TablesInSelectQuery", "children": [{"type": "TablesInSelectQueryElement",
                         "table_expression": {"type": "TableExpression", **(modifiers or {}),
                             "database_and_table_name": {"type": "TableIdentifier", "name": f"{database}.{table}",
                                                         "name_parts": [database, table]}}}]},
              "where": where}  # fmt: skip
    union = {"type": "SelectWithUnionQuery", "union_mode": "UNION_DEFAULT",
             "list_of_selects": {"type": "ExpressionList", "children": [select]}}  # fmt: skip
    sub: dict[str, Any] = {"type": "Subquery", "children": [union]}
    if alias:
        sub["alias"] = alias
    return sub


class _Scoper:
    """Replaces cluster-table references in the AST by confining subqueries (CTE names in scope are left alone)."""

    def __init__(self, database: str, clusters: list[str]) -> None:
        self.database = database
        self.clusters = clusters

    def _target(self, n: dict[str, Any], ctes: frozenset[str]) -> str | None:
        parts = n.get("name_parts") or [n.get("name", "")]
        if len(parts) == 1 and parts[0] in ctes:
            return None
        if len(parts) == 2 and parts[0] == self.database:
            parts = parts[1:]
        if len(parts) == 1 and parts[0] in CLUSTER_TABLES:
            return parts[0]
        raise ReadOnlyError(f"table {'.'.join(parts)} cannot be confined to clusters", ".".join(parts))

    def node(self, n: Any, ctes: frozenset[str]) -> None:
        if isinstance(n, list):
            for x in n:
                self.node(x, ctes)
            return
        if not isinstance(n, dict) or n.get("type") == "Literal":
            return
        kind = n.get("type")
        if kind == "SelectQuery":
            if "prewhere" in n:
                raise ReadOnlyError("PREWHERE is not allowed in a statement confined to clusters (use WHERE)",
                                    "PREWHERE")  # fmt: skip
            ctes = ctes | {w["name"] for w in (n.get("with") or {}).get("children", ())
                           if w.get("type") == "WithElement"}  # fmt: skip
        if kind == "TableExpression" and "database_and_table_name" in n:
            ident = n["database_and_table_name"]
            table = self._target(ident, ctes)
            if table is not None:
                del n["database_and_table_name"]
                modifiers = {k: n.pop(k) for k in MODIFIERS if k in n}
                n["subquery"] = _scoping_subquery(self.database, table, self.clusters, ident.get("alias") or table,
                                                  modifiers)  # fmt: skip
                return
        if kind == "Function" and _is_in(n.get("name")):
            args = (n.get("arguments") or {}).get("children") or []
            if len(args) == 2 and isinstance(args[1], dict) and args[1].get("type") == "Identifier":
                table = self._target(args[1], ctes)
                if table is not None:
                    args[1] = _scoping_subquery(self.database, table, self.clusters, None)
                    self.node(args[0], ctes)  # not into the new subquery: it is confined already
                    return
        for value in n.values():
            if isinstance(value, dict | list):
                self.node(value, ctes)


def _verify_scoped(ast: Any, database: str, clusters: list[str]) -> None:
    """Every table identifier of the rebuilt AST must be the FROM of a confining subquery with our predicate."""
    expected = _scoping_subquery(database, "x", clusters, None)["children"][0]["list_of_selects"]["children"][0]

    def norm(n: Any) -> Any:  # compare structure, ignoring flags such as is_operator the formatter may change
        if isinstance(n, dict):
            return {k: norm(v) for k, v in n.items() if k in ("type", "name", "arguments", "children", "value",
                                                               "field_type")}  # fmt: skip
        if isinstance(n, list):
            return [norm(x) for x in n]
        return n

    def confining(select: Any) -> bool:
        if not isinstance(select, dict) or select.get("type") != "SelectQuery":
            return False
        if set(select) - {"type", "select", "tables", "where"}:
            return False
        if norm(select.get("select")) != norm(expected["select"]):
            return False
        if norm(select.get("where")) != norm(expected["where"]):
            return False
        elems = select["tables"].get("children", [])
        if len(elems) != 1 or set(elems[0]) != {"type", "table_expression"}:
            return False
        te = elems[0]["table_expression"]
        ident = te.get("database_and_table_name")
        return set(te) - set(MODIFIERS) == {"type", "database_and_table_name"} and isinstance(ident, dict) and (
            ident.get("name_parts") or [None])[0] == database and not ident.get("alias")  # fmt: skip

    def walk(n: Any) -> None:
        if isinstance(n, list):
            for x in n:
                walk(x)
            return
        if not isinstance(n, dict) or n.get("type") == "Literal":
            return
        if n.get("type") == "SelectQuery":
            if confining(n):
                return  # its only table is the confined one; nothing else inside
            names = {w["name"] for w in (n.get("with") or {}).get("children", ()) if w.get("type") == "WithElement"}
            scope_stack.append(names)
            try:
                for v in n.values():
                    if isinstance(v, dict | list):
                        walk(v)
            finally:
                scope_stack.pop()
            return
        if n.get("type") == "TableIdentifier":
            parts = n.get("name_parts") or [n.get("name", "")]
            if not (len(parts) == 1 and any(parts[0] in s for s in scope_stack)):
                raise ReadOnlyError(f"cannot confine this statement to clusters (table {'.'.join(parts)} left "
                                    "unconfined)", ".".join(parts))  # fmt: skip
        if n.get("type") == "Function" and _is_in(n.get("name")):
            args = (n.get("arguments") or {}).get("children") or []
            if len(args) == 2 and isinstance(args[1], dict) and args[1].get("type") == "Identifier":
                raise ReadOnlyError("cannot confine this statement to clusters (IN table left unconfined)")
        for v in n.values():
            if isinstance(v, dict | list):
                walk(v)

    scope_stack: list[set[str]] = []
    walk(ast)


# --- a read-only user on a ClickHouse server ----------------------------------------------------------------------
def reader_user_sql(user: str, password_sha256_hex: str, database: str, limits: Mapping[str, Any],
                    tables: Iterable[str] = READABLE_TABLES, cluster: str = "") -> list[str]:  # fmt: skip
    """Statements that create the dedicated read-only reader of a ClickHouse server (run by an admin).

    - a settings profile ``<user>_profile``: ``readonly=1`` (no writes, no SET; CONST), every limit at its value
      with a MAX constraint so a reader can lower it per query (what kaudit sends) but never raise it
      (CHANGEABLE_IN_READONLY), ``allow_ddl=0``, ``allow_introspection_functions=0``;
    - a role ``<user>_role`` with SELECT on the project's tables only (no table functions: those need the
      CREATE TEMPORARY TABLE / FILE / URL / S3 / REMOTE ... grants the role does not have; no dictGet);
    - the user, identified by sha256 of its password, with that role and profile as defaults.

    ``cluster`` (the cluster layout, ``Settings.clickhouse_cluster``): every statement ON CLUSTER (users, roles
    and grants are per node), and SELECT also on each cluster table's ``<table>_local``: with inter-server
    ``<secret>`` a shard runs a Distributed read as the initial user, who then needs the local table. Safe: kaudit's
    guard never lets a query name a ``*_local`` table (not in READABLE_TABLES), and what one holds is a part of what
    its Distributed table shows. ``events_1m_mv`` does not exist there (its view is ``events_1m_mv_local``).
    """
    ident = _ident(user)
    on = f" ON CLUSTER {_ident(cluster)}" if cluster else ""
    if cluster:
        tables = {t for t in tables if t != "events_1m_mv"} | {f"{t}_local" for t in CLUSTER_TABLES}
    profile, role = _ident(f"{user}_profile"), _ident(f"{user}_role")
    settings = ["readonly = 1 CONST", "allow_ddl = 0 CONST", "allow_introspection_functions = 0 CONST"]
    for name in LIMIT_SETTINGS:
        value = int(limits.get(name, 0))
        if value > 0:
            settings.append(f"{name} = {value} MAX {value} CHANGEABLE_IN_READONLY")
    for name in ("result_overflow_mode", "read_overflow_mode", "timeout_overflow_mode"):
        settings.append(f"{name} = 'throw' CONST")
    settings.append("additional_table_filters CHANGEABLE_IN_READONLY")  # scope_to_clusters: it only narrows
    settings.extend(f"{name} CHANGEABLE_IN_READONLY" for name in NO_EARLY_EVALUATION)  # ditto: evaluation order
    settings.extend(f"{name} CHANGEABLE_IN_READONLY" for name in SCOPED_COLUMNS)  # what * of a table shows
    db = _ident(database)
    out = [
        f"CREATE SETTINGS PROFILE OR REPLACE {profile}{on} SETTINGS " + ", ".join(settings),
        f"CREATE ROLE OR REPLACE {role}{on}",
        *(f"GRANT{on} SELECT ON {db}.{_ident(t)} TO {role}" for t in sorted(tables)),
        f"CREATE USER OR REPLACE {ident}{on} IDENTIFIED WITH sha256_hash BY {_sql_string(password_sha256_hex)} "
        f"DEFAULT ROLE {role} SETTINGS PROFILE {profile} DEFAULT DATABASE {db}",
        f"GRANT{on} {role} TO {ident}",
    ]
    return out


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f"`{name}`"
