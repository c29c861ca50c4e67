"""Widget and drill-down queries: parameterized SQL (no request text is ever spliced in) plus the
query-language text that shows the user what each view counts.

Counts are rows of ``audit_events`` (deduplicated events), like the query language: a request logged at
two stages counts twice. Time series and the resource ranking read the per-minute rollup ``events_1m``;
rankings over columns the rollup lacks (users, source IPs, user agents) read ``audit_events`` inside the
time range with a LIMIT, which the (cluster, hour, ...) sort key keeps cheap.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.query.clusters import PICK_MAX  # one cap for both pickers' answers (searched beyond it)
from pipeline.web.timerange import TimeRange, fmt_step

TOP_N = 10
EVENT_TIME = "request_received_ts"
T_EVENTS = f"{EVENT_TIME} >= fromUnixTimestamp64Micro({{t0:Int64}}, 'UTC') AND {EVENT_TIME} < fromUnixTimestamp64Micro({{t1:Int64}}, 'UTC')"
T_ROLLUP = "minute >= toDateTime(intDiv({t0:Int64}, 1000000), 'UTC') AND minute < toDateTime(intDiv({t1:Int64}, 1000000), 'UTC')"
T_ALERTS = (
    "ts >= fromUnixTimestamp64Micro({t0:Int64}, 'UTC') AND ts < fromUnixTimestamp64Micro({t1:Int64}, 'UTC')"
)
HIGHLIGHT_VERBS = ("create", "update", "patch", "delete", "deletecollection")

# Filters a drill-down accepts: request parameter -> (SQL predicate, ClickHouse type, query-language field).
# Values always travel as bound parameters.
FILTERS: dict[str, tuple[str, str, str]] = {
    "verb": ("verb = {%s:String}", "String", "verb"),
    "responsestatus_code": ("responsestatus_code = {%s:UInt16}", "UInt16", "responsestatus_code"),
    "username": ("username = {%s:String}", "String", "username"),
    "impersonated_username": ("impersonated_username = {%s:String}", "String", "impersonated_username"),
    "objectref_resource": ("objectref_resource = {%s:String}", "String", "objectref_resource"),
    "objectref_subresource": ("objectref_subresource = {%s:String}", "String", "objectref_subresource"),
    "objectref_namespace": ("objectref_namespace = {%s:String}", "String", "objectref_namespace"),
    "objectref_name": ("objectref_name = {%s:String}", "String", "objectref_name"),
    "objectref_apigroup": ("objectref_apigroup = {%s:String}", "String", "objectref_apigroup"),
    "sourceip": ("has(sourceips, {%s:String})", "String", "sourceips"),
    "useragent": ("useragent = {%s:String}", "String", "useragent"),
    "auditid": ("auditid = {%s:String}", "String", "auditid"),
    "stage": ("stage = {%s:String}", "String", "stage"),
    "decision": ("decision = {%s:String}", "String", "decision"),
    # the effective user RBAC sees: the impersonated user, else the authenticated one
    "effective_user": (
        "if(impersonated_username != '', impersonated_username, username) = {%s:String}",
        "String",
        "effective_user",
    ),
}
# Columns of the events table of a drill-down (who / what / when / where / outcome).
EVENT_LIST_COLUMNS = (
    "toUnixTimestamp64Micro(request_received_ts) AS ts_us",
    "cluster",
    "auditid",
    "stage",
    "username",
    "impersonated_username",
    "verb",
    "objectref_apigroup",
    "objectref_resource",
    "objectref_subresource",
    "objectref_namespace",
    "objectref_name",
    "request_uri",
    "sourceips",
    "useragent",
    "responsestatus_code",
    "responsestatus_reason",
    "decision",
    "decision_reason",
)


def ql_value(v: Any) -> str:
    """A value as a query-language literal (numbers bare, strings double-quoted with escapes)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Where:
    """A conjunction of predicates with their bound parameters and the matching query-language text."""

    sql: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    ql: list[str] = field(default_factory=list)

    def add(self, sql: str, ql: str | None = None, **params: Any) -> Where:
        self.sql.append(sql)
        self.params.update(params)
        if ql:
            self.ql.append(ql)
        return self

    def sql_text(self) -> str:
        return " AND ".join(self.sql) if self.sql else "1"

    def ql_text(self) -> str:
        return " and ".join(self.ql)


def confine(w: Where, allowed: Collection[str] | None) -> Where:
    """AND the reader's clusters (None = every cluster; empty = nothing) into ``w``: a predicate of its own,
    bound as a parameter, so a requested ``cluster=`` can only narrow what it shows."""
    if allowed is not None:
        if allowed:
            w.add("cluster IN {allowed:Array(String)}", allowed=sorted(set(allowed)))
        else:
            w.sql.append("0")
    return w


def base_where(tr: TimeRange, clusters: Iterable[str], time_pred: str, allowed: Collection[str] | None = None) -> Where:
    w = Where(params=tr.params())
    w.sql.append(time_pred)
    cl = [c for c in clusters if c]
    if cl:
        w.add("cluster IN {clusters:Array(String)}", clusters=cl)
    return confine(w, allowed)


def cluster_list(allowed: Collection[str] | None = None) -> tuple[str, dict[str, Any]]:
    """The cluster picker: the clusters with events that the reader may see."""
    w = confine(Where(), allowed)
    return f"SELECT DISTINCT cluster FROM events_1m WHERE {w.sql_text()} ORDER BY cluster LIMIT {PICK_MAX}", w.params


def apply_filters(w: Where, filters: dict[str, str]) -> Where:
    """Add the drill-down filters (unknown names are ignored by the caller's validation)."""
    for i, (name, value) in enumerate(sorted(filters.items())):
        pred, typ, ql_field = FILTERS[name]
        pname = f"f{i}"
        bound: Any = value
        if typ == "UInt16":
            bound = int(value)
        if name == "effective_user":
            v = ql_value(bound)
            ql = f"(impersonated_username={v} or (impersonated_username is empty and username={v}))"
        else:
            ql = f"{ql_field}={ql_value(bound)}"
        w.add(pred % pname, ql, **{pname: bound})
    return w


def join_ql(*parts: str) -> str:
    return " ".join(p for p in parts if p).strip()


# --- widget queries: each returns (sql, params, query-language text) -----------------------------------------


def series_sql(
    tr: TimeRange, clusters: list[str], key: str, extra: str = "", allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any]]:
    w = base_where(tr, clusters, T_ROLLUP, allowed)
    if extra:
        w.sql.append(extra)
    w.params["step"] = tr.step_s
    sql = (
        f"SELECT toUnixTimestamp(toStartOfInterval(minute, toIntervalSecond({{step:UInt32}}))) AS t, {key} AS k, "
        f"sum(events) AS n FROM events_1m WHERE {w.sql_text()} GROUP BY t, k ORDER BY t, k"
    )
    return sql, w.params


def actions(tr: TimeRange, clusters: list[str], allowed: Collection[str] | None = None) -> tuple[str, dict[str, Any], str]:
    sql, params = series_sql(tr, clusters, "verb", allowed=allowed)
    return sql, params, f"timeslice {fmt_step(tr.step_s)} groupby verb"


def status_codes(
    tr: TimeRange, clusters: list[str], allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    # code 0 = no response yet (RequestReceived stage): not a status code
    sql, params = series_sql(tr, clusters, "responsestatus_code", "responsestatus_code > 0", allowed)
    return sql, params, f"responsestatus_code > 0 timeslice {fmt_step(tr.step_s)} groupby responsestatus_code"


def top_resources(
    tr: TimeRange, clusters: list[str], n: int = TOP_N, allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    w = base_where(tr, clusters, T_ROLLUP, allowed)
    w.params["n"] = n
    sql = (
        f"SELECT objectref_resource AS k, sum(events) AS n FROM events_1m WHERE {w.sql_text()} "
        "AND objectref_resource != '' GROUP BY k ORDER BY n DESC, k LIMIT {n:UInt32}"
    )
    return (
        sql,
        w.params,
        f"objectref_resource is not empty groupby objectref_resource sort by count desc limit {n}",
    )


def top_events_column(
    tr: TimeRange, clusters: list[str], column: str, n: int = TOP_N, allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    """Top values of a column of ``audit_events`` (username, useragent, sourceips)."""
    w = base_where(tr, clusters, T_EVENTS, allowed)
    w.params["n"] = n
    if column == "sourceips":
        sql = (
            f"SELECT ip AS k, count() AS n FROM audit_events ARRAY JOIN sourceips AS ip WHERE {w.sql_text()} "
            "GROUP BY k ORDER BY n DESC, k LIMIT {n:UInt32}"
        )
    else:
        sql = (
            f"SELECT {column} AS k, count() AS n FROM audit_events WHERE {w.sql_text()} "
            "GROUP BY k ORDER BY n DESC, k LIMIT {n:UInt32}"
        )
    return sql, w.params, f"groupby {column} sort by count desc limit {n}"


def denied_by_user(
    tr: TimeRange, clusters: list[str], n: int = 20, allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    """401 and 403 per (code, user, impersonated user): RBAC is evaluated for the impersonated user."""
    w = base_where(tr, clusters, T_EVENTS, allowed)
    w.params["n"] = n
    sql = (
        "SELECT responsestatus_code AS code, username, impersonated_username, count() AS n, "
        "toUnixTimestamp64Micro(max(request_received_ts)) AS last_us FROM audit_events "
        f"WHERE {w.sql_text()} AND responsestatus_code IN (401, 403) "
        "GROUP BY code, username, impersonated_username ORDER BY n DESC, code, username LIMIT {n:UInt32}"
    )
    return (
        sql,
        w.params,
        (
            "responsestatus_code in (401, 403) groupby responsestatus_code, username, impersonated_username "
            f"sort by count desc limit {n}"
        ),
    )


def alerts_by_rule(
    tr: TimeRange, clusters: list[str], allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    """Alerts per (rule, severity); ``alerts`` is a ReplacingMergeTree, so count distinct alert ids."""
    w = base_where(tr, clusters, T_ALERTS, allowed)
    sql = (
        "SELECT rule_id, severity, any(title) AS title, uniqExact(alert_id) AS n, "
        "toUnixTimestamp64Micro(max(ts)) AS last_us FROM alerts "
        f"WHERE {w.sql_text()} GROUP BY rule_id, severity "
        "ORDER BY multiIf(severity = 'critical', 0, severity = 'high', 1, severity = 'medium', 2, "
        "severity = 'low', 3, 4), n DESC, rule_id LIMIT 50"
    )
    return sql, w.params, ""


def recent_alerts(
    tr: TimeRange, clusters: list[str], n: int = 20, allowed: Collection[str] | None = None
) -> tuple[str, dict[str, Any], str]:
    w = base_where(tr, clusters, T_ALERTS, allowed)
    w.params["n"] = n
    sql = (
        "SELECT alert_id, rule_id, title, severity, cluster, toUnixTimestamp64Micro(ts) AS ts_us, auditid, "
        "username, verb, objectref_resource, objectref_namespace, objectref_name, responsestatus_code, count "
        f"FROM alerts WHERE {w.sql_text()} ORDER BY ts DESC, alert_id LIMIT 1 BY alert_id LIMIT {{n:UInt32}}"
    )
    return sql, w.params, ""


def events_list(
    tr: TimeRange, clusters: list[str], filters: dict[str, str], limit: int, offset: int,
    allowed: Collection[str] | None = None,
) -> tuple[str, str, dict[str, Any], str]:
    """(page SQL, count SQL, params, query text) of a drill-down."""
    w = apply_filters(base_where(tr, clusters, T_EVENTS, allowed), filters)
    w.params.update(limit=limit, offset=offset)
    cols = ", ".join(EVENT_LIST_COLUMNS)
    page = (
        f"SELECT {cols} FROM audit_events WHERE {w.sql_text()} "
        "ORDER BY request_received_ts DESC, auditid, stage LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
    )
    count = f"SELECT count() FROM audit_events WHERE {w.sql_text()}"
    return page, count, w.params, w.ql_text()


def event_detail(cluster: str, auditid: str, allowed: Collection[str] | None = None) -> tuple[str, dict[str, Any], str]:
    w = Where().add("auditid = {auditid:String}", auditid=auditid)
    if cluster:
        w.add("cluster = {cluster:String}", cluster=cluster)
    confine(w, allowed)
    sql = (
        "SELECT *, toUnixTimestamp64Micro(request_received_ts) AS request_received_us, "
        "toUnixTimestamp64Micro(stage_ts) AS stage_us, latency_us FROM audit_events "
        f"WHERE {w.sql_text()} ORDER BY stage_ts, stage LIMIT 10"
    )
    return sql, w.params, f"auditid={ql_value(auditid)}"


def alert_row(alert_id: str, allowed: Collection[str] | None = None) -> tuple[str, dict[str, Any]]:
    w = confine(Where().add("alert_id = {id:String}", id=alert_id), allowed)
    return (
        "SELECT alert_id, rule_id, title, severity, cluster, toUnixTimestamp64Micro(ts) AS ts_us, auditid, "
        "username, impersonated_username, verb, objectref_resource, objectref_namespace, objectref_name, "
        "responsestatus_code, toUnixTimestamp64Micro(window_start) AS window_us, count, group_key "
        f"FROM alerts WHERE {w.sql_text()} ORDER BY ts DESC LIMIT 1",
        w.params,
    )
