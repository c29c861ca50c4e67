"""Query alerts: saved searches evaluated on a schedule; each group crossing the threshold raises an alert on the
alerts topics, with the stream rules' Alert schema (rule_id = ``search:<name>``, source_id the same).

Evaluation ticks are aligned to the epoch (every 60 s: at :00 of each minute), and tick t reads the events of
[t - window, t). Per group (the query's groupby values; one group without groupby):
- the condition (``--when``, a having clause) holds at a tick -> its run of holding ticks grows; once it reaches
  ``--for`` the group fires: one alert, id sha1(rule | group | window start). It stays firing, without new alerts,
  while the condition holds;
- a firing group whose condition no longer holds -> one resolved alert (tags ``resolved``), id
  sha1(rule | group | window start | resolved).

Exactly once, across restarts and a second evaluator: ids are deterministic per (search, group, window); the
alerts table (ReplacingMergeTree on alert_id), and the alerts topic's last 15 minutes for what the sink has not
stored yet, say which groups are firing (their newest alert is not a resolved one), and an id already stored is
never produced again. A restarted evaluator does not evaluate the tick its
predecessor may have evaluated: it starts at the next one, with the firing groups read from the alerts table and
the runs of holding ticks (``--for``) evaluated again from the stored events (deterministic). Two evaluators racing
on the very same tick may both produce one new alert: same id and key, stored once.

Runs in the process that owns the warehouse (the sink in embedded mode) or in `kaudit alert run` (a server DSN).
Metrics: kaudit_query_alert_* on /metrics.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram

from pipeline import config
from pipeline.config import Settings
from pipeline.kafka import headers as H
from pipeline.query import QueryError, compile_query
from pipeline.searches.store import SavedSearch, Store, evaluation_query

log = logging.getLogger("kaudit.alerts")

EVALUATIONS = Counter("kaudit_query_alert_evaluations_total", "Query alert evaluations", ["search", "result"])
EVAL_SECONDS = Histogram("kaudit_query_alert_evaluation_seconds", "Time of one query alert evaluation (query "
                         "included)", ["search"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))  # fmt: skip
ROWS_READ = Counter("kaudit_query_alert_rows_read_total", "Rows ClickHouse read for query alert evaluations", ["search"])
ALERTS = Counter("kaudit_query_alerts_total", "Query alerts produced", ["search", "state"])
FIRING = Gauge("kaudit_query_alert_groups_firing", "Groups of a query alert now firing", ["search"])
MAX_GROUPS = 10_000  # groups read per evaluation
RECENT_S = 900  # on start, alerts this recent are read back from the topic (the sink may not have stored them)
DEFINITIONS_TTL_S = 5.0  # saved searches are read again this often (an `alert add` takes effect at once)
RECORD_FIELDS = ("cluster", "username", "impersonated_username", "useragent", "verb", "objectref_resource",
                 "objectref_subresource", "objectref_namespace", "objectref_name", "objectref_apigroup",
                 "request_uri", "decision", "decision_reason", "stage")  # fmt: skip


def alert_id(*parts: object) -> str:
    """The same recipe as the stream rules' ids (pipeline.agents.rules.alert_id)."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class Group:
    key: str  # "username=bob, verb=list" ("" without groupby)
    values: dict[str, Any]  # every column of its row
    count: int


@dataclass
class _State:
    fingerprint: tuple
    last_tick: int  # seconds; the newest tick evaluated (or skipped as the predecessor's)
    runs: dict[str, int] = field(default_factory=dict)  # group -> consecutive holding ticks
    firing: set[str] | None = None  # None until read from the alerts table


class Evaluator:
    """Evaluates every saved search that is an alert. ``tick(now)`` does one round (tests call it directly);
    ``start()`` runs rounds on a thread until ``stop()``."""

    def __init__(self, s: Settings, warehouse: Any, producer: Any = None, stop: threading.Event | None = None,
                 recent_from_topic: bool = True) -> None:  # fmt: skip
        from pipeline.models.avro import codec

        self.s = s
        self.wh = warehouse
        self.store = Store.for_warehouse(warehouse)
        self._producer = producer
        self.stop_event = stop or threading.Event()
        self.codec = codec("alert")
        self.t_alerts, self.t_alerts_json = s.topic(config.ALERTS), s.topic(config.ALERTS_JSON)
        self.states: dict[str, _State] = {}
        self._defs: list[SavedSearch] = []
        self._defs_at = 0.0
        self._thread: threading.Thread | None = None
        self.produced: list[dict[str, Any]] = []  # every alert this evaluator produced (tests, logs)
        self._recent: dict[str, dict[str, tuple[int, bool]]] | None = None if recent_from_topic else {}

    # --- loop ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="query-alerts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread:
            self._thread.join(timeout=30)
        if self._producer is not None:
            self._producer.flush(10)

    def _loop(self) -> None:
        log.info("query alerts: evaluating saved searches with --every")
        while not self.stop_event.is_set():
            try:
                wait = self.tick(time.time())
            except Exception:  # noqa: BLE001 - a broken round must not stop later ones
                log.exception("query alerts: round failed")
                wait = 5.0
            self.stop_event.wait(max(0.2, min(wait, 5.0)))

    def definitions(self, now: float) -> list[SavedSearch]:
        if now - self._defs_at >= DEFINITIONS_TTL_S or now < self._defs_at:
            try:
                self._defs = self.store.list(alerts_only=True)
                self._defs_at = now
            except Exception as exc:  # noqa: BLE001 - warehouse briefly away: keep the last definitions
                log.warning("query alerts: cannot read saved searches (%s)", str(exc).splitlines()[0][:200])
        return self._defs

    def tick(self, now: float, skip_current: bool = True) -> float:
        """Evaluate every alert whose tick has come; returns seconds until the next tick is due. A search seen for
        the first time skips the current tick (a predecessor may have evaluated it) unless ``skip_current`` is
        False (`kaudit alert run --once`)."""
        defs = self.definitions(now)
        names = {d.name for d in defs}
        for gone in set(self.states) - names:
            del self.states[gone]
            FIRING.labels(gone).set(0)
        wait = DEFINITIONS_TTL_S
        for ss in defs:
            every = ss.alert_every
            t = int(now) // every * every
            fp = (ss.query, ss.alert_when, every, ss.alert_window, ss.alert_for, tuple(ss.clusters))
            st = self.states.get(ss.name)
            if st is None or st.fingerprint != fp:
                # new (or changed, or this process just started): the current tick may be the predecessor's
                self.states[ss.name] = st = _State(fp, t if skip_current else t - every)
            if t > st.last_tick:
                self.evaluate(ss, st, t)
            wait = min(wait, t + every - now)
        return wait

    # --- one evaluation ------------------------------------------------------------------------------
    def groups_at(self, ss: SavedSearch, t: int) -> dict[str, Group]:
        """The groups for which the condition holds over [t - window, t)."""
        cq = compile_query(f"{evaluation_query(ss)} limit {MAX_GROUPS}", from_=str(t - ss.alert_window), to=str(t),
                           cluster=ss.clusters or None, settings=self.s)  # fmt: skip
        cols, rows, read = self._query(cq)
        names = cq.columns
        del cols
        keys = names[: cq.n_keys]
        out: dict[str, Group] = {}
        for row in rows:
            values = dict(zip(names, row, strict=False))
            key = ", ".join(f"{k}={values[k]}" for k in keys)
            n = values.get("count")
            if n is None:
                n = next((v for k, v in values.items() if k not in keys and isinstance(v, int | float)), 0)
            out[key] = Group(key, values, int(n or 0))
        ROWS_READ.labels(ss.name).inc(read)
        return out

    def _query(self, cq: Any) -> tuple[list[str], list[list[Any]], int]:
        fn = getattr(self.wh, "query_summary", None)
        if fn is not None:
            return fn(cq.sql, cq.params)
        cols, rows = self.wh.query(cq.sql, cq.params)
        return cols, rows, 0

    def evaluate(self, ss: SavedSearch, st: _State, t: int) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            if st.firing is None:  # first evaluation here: what is firing, and the runs --for needs
                st.firing = self._firing_from_table(ss)
                for k in range(ss.alert_for - 1, 0, -1):  # the runs of holding ticks before this one
                    st.runs = {g: st.runs.get(g, 0) + 1 for g in self.groups_at(ss, t - k * ss.alert_every)}
            holding = self.groups_at(ss, t)
        except (QueryError, Exception) as exc:  # noqa: BLE001 - one search's failure must not stop the others
            EVALUATIONS.labels(ss.name, "error").inc()
            log.warning("query alert %s: evaluation at %d failed: %s", ss.name, t, str(exc).splitlines()[0][:300])
            st.last_tick = t
            return []
        st.runs = {g: st.runs.get(g, 0) + 1 for g in holding}
        window_us = (t - ss.alert_window) * 1_000_000
        records = []
        for key, g in holding.items():
            if st.runs[key] >= ss.alert_for and key not in st.firing:
                records.append(self._record(ss, g, t, window_us, resolved=False))
        for key in sorted(st.firing - set(holding)):
            records.append(self._record(ss, Group(key, _parse_key(key), 0), t, window_us, resolved=True))
        sent = self._produce(ss, records)
        for rec in sent:
            if "resolved" in rec["tags"]:
                st.firing.discard(rec["group_key"])
            else:
                st.firing.add(rec["group_key"])
        st.last_tick = t
        FIRING.labels(ss.name).set(len(st.firing))
        EVALUATIONS.labels(ss.name, "ok").inc()
        EVAL_SECONDS.labels(ss.name).observe(time.perf_counter() - t0)
        return sent

    def _firing_from_table(self, ss: SavedSearch) -> set[str]:
        """Groups whose newest announced alert is a firing one: the alerts table, and the alerts topic's last
        minutes for what the sink may not have stored yet (a sink restarted right after an alert)."""
        rows = self.wh.query(
            "SELECT group_key, toUnixTimestamp64Micro(max(ts)), argMax(has(tags, 'resolved'), ts) FROM alerts "
            "WHERE rule_id = {r:String} GROUP BY group_key",
            {"r": ss.rule_id},
        )[1]
        newest = {r[0]: (int(r[1]), bool(r[2])) for r in rows}
        for key, (ts, resolved) in self._recent_from_topic().get(ss.rule_id, {}).items():
            if key not in newest or ts > newest[key][0]:
                newest[key] = (ts, resolved)
        return {k for k, (_ts, resolved) in newest.items() if not resolved}

    def _recent_from_topic(self) -> dict[str, dict[str, tuple[int, bool]]]:
        """rule_id -> group -> (ts, resolved) of the query alerts on the alerts topic in the last RECENT_S seconds
        (read once per evaluator; {} when Kafka does not answer: the table alone decides)."""
        if self._recent is not None:
            return self._recent
        self._recent = {}
        try:
            from confluent_kafka import OFFSET_END, Consumer, TopicPartition

            from pipeline.models.avro import decode_record

            c = Consumer({"bootstrap.servers": self.s.kafka_bootstrap, "group.id": f"kaudit-query-alerts-{id(self)}",
                          "enable.auto.commit": False, "auto.offset.reset": "earliest"})  # fmt: skip
            try:
                since_ms = int((time.time() - RECENT_S) * 1000)
                meta = c.list_topics(self.t_alerts, timeout=10).topics[self.t_alerts]
                parts = [TopicPartition(self.t_alerts, p, since_ms) for p in meta.partitions]
                starts = c.offsets_for_times(parts, timeout=10)
                ends = {p: c.get_watermark_offsets(TopicPartition(self.t_alerts, p), timeout=10)[1] for p in meta.partitions}
                todo = {tp.partition for tp in starts if tp.offset not in (OFFSET_END, -1) and tp.offset < ends[tp.partition]}
                if todo:
                    c.assign([tp for tp in starts if tp.partition in todo])
                deadline = time.monotonic() + 30
                while todo and time.monotonic() < deadline:
                    m = c.poll(0.5)
                    if m is None or m.error():
                        continue
                    if m.offset() + 1 >= ends[m.partition()]:
                        todo.discard(m.partition())
                    if not (m.key() or b"") or b"search:" not in (dict(m.headers() or []).get(H.SOURCE_ID) or b""):
                        continue
                    rec = decode_record("alert", m.value(), m.headers())
                    group = self._recent.setdefault(rec["rule_id"], {})
                    old = group.get(rec["group_key"])
                    if old is None or rec["ts"] >= old[0]:
                        group[rec["group_key"]] = (int(rec["ts"]), "resolved" in rec["tags"])
            finally:
                c.close()
        except Exception as exc:  # noqa: BLE001 - Kafka away: the alerts table alone decides
            log.warning("query alerts: cannot read the recent alerts from Kafka (%s)", str(exc).splitlines()[0][:200])
        return self._recent

    def _record(self, ss: SavedSearch, g: Group, t: int, window_us: int, resolved: bool) -> dict[str, Any]:
        aid = alert_id(ss.rule_id, g.key, window_us, "resolved") if resolved else alert_id(ss.rule_id, g.key, window_us)
        v = g.values
        cluster = str(v.get("cluster") or (ss.clusters[0] if len(ss.clusters) == 1 else ""))
        title = f"{'resolved: ' if resolved else ''}{ss.name}: {ss.alert_when}" + (f" ({g.key})" if g.key else "")
        rec: dict[str, Any] = {
            "alert_id": aid, "rule_id": ss.rule_id, "title": title[:500], "severity": ss.severity,
            "cluster": cluster, "ts": t * 1_000_000, "window_start": window_us, "count": g.count,
            "group_key": g.key, "tags": ["query-alert", "resolved" if resolved else "firing"],
            "source_id": ss.rule_id, "usergroups": [], "sourceips": [], "auditid": "",
        }  # fmt: skip
        for f in RECORD_FIELDS:
            rec[f] = str(v[f]) if f in v and v[f] is not None else ""
        for f in ("usergroups", "sourceips"):
            if v.get(f):
                rec[f] = [str(v[f])]
        code = v.get("responsestatus_code")
        rec["responsestatus_code"] = int(code) if isinstance(code, int | float) or str(code or "").isdigit() else 0
        return rec

    def _produce(self, ss: SavedSearch, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Produce the records no stored alert has already (and wait for Kafka's acks); returns the ones sent
        or already stored (both count as announced)."""
        if not records:
            return []
        ids = [r["alert_id"] for r in records]
        stored = {r[0] for r in self.wh.query("SELECT DISTINCT alert_id FROM alerts WHERE alert_id IN {ids:Array(String)}",
                                               {"ids": ids})[1]}  # fmt: skip
        todo = [r for r in records if r["alert_id"] not in stored]
        if todo:
            if self._producer is None:
                from pipeline.kafka.producer import make_producer

                self._producer = make_producer(self.s)
            errors: list[Any] = []
            hdr = [*self.codec.headers, (H.SOURCE_ID, ss.rule_id.encode())]
            for rec in todo:
                key = rec["alert_id"].encode()
                self._producer.produce(self.t_alerts, self.codec.encode(rec), key=key, headers=hdr,
                                       on_delivery=lambda err, _m: errors.append(err) if err else None)  # fmt: skip
                self._producer.produce(self.t_alerts_json, orjson.dumps(rec), key=key,
                                       headers=[("content-type", b"application/json")],
                                       on_delivery=lambda err, _m: errors.append(err) if err else None)  # fmt: skip
            left = self._producer.flush(30)
            if errors or left:
                log.warning("query alert %s: Kafka did not take %d alert(s) (%s); retried at the next tick",
                            ss.name, len(todo), errors[0] if errors else "timeout")  # fmt: skip
                return [r for r in records if r["alert_id"] in stored]
            for rec in todo:
                state = "resolved" if "resolved" in rec["tags"] else "firing"
                ALERTS.labels(ss.name, state).inc()
                log.info("query alert %s %s: %s (count %d)", ss.name, state, rec["group_key"] or "-", rec["count"])
            self.produced.extend(todo)
        return records


def _parse_key(key: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in key.split(", ") if key else []:
        k, _, v = part.partition("=")
        out[k] = v
    return out
