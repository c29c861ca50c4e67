"""One raw record -> every output the worker writes for it.

``Processor.process`` is a deterministic function of (raw record, partition state before it): the same record
replayed after a crash yields byte-identical events/stats values and the same alert ids, which is what makes
the pipeline exact under at-least-once delivery. No Kafka here, so it is unit-testable and benchmarkable.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import config
from pipeline.agents import memory as M
from pipeline.agents.conditions import EventView
from pipeline.agents.filters import NoiseFilter
from pipeline.agents.rules import Rule, RuleSet, alert_id
from pipeline.agents.state import PartitionState
from pipeline.agents.windows import WindowCounts, window_start_us
from pipeline.config import Settings
from pipeline.kafka import deadletter
from pipeline.kafka import headers as H
from pipeline.models import native
from pipeline.models.avro import codec, encode_event_batch, source_id_suffix
from pipeline.models.normalize import NormalizeError, normalize_event
from pipeline.models.readers import ParseIssue, RawEvent, read_events

log = logging.getLogger("kaudit.worker")


@dataclass
class Alert:
    alert_id: str
    record: dict[str, Any]


@dataclass
class RecordOutput:
    """What one raw record produces; values are encoded, ready to send."""

    source_id: str
    partition: int
    cluster: str
    events_value: bytes | None = None
    verb_value: bytes | None = None
    status_value: bytes | None = None
    alerts: list[Alert] = field(default_factory=list)
    deadletters: list[tuple[bytes, list[tuple[str, bytes]]]] = field(default_factory=list)
    memory: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value) for the memory topic
    n_events: int = 0  # events read
    n_kept: int = 0  # written to the events topic
    n_dup: int = 0
    n_dropped: int = 0  # noise filter
    n_bad: int = 0  # dead-lettered events (or 1 for a whole bad record)


def parse_stages(text: str) -> frozenset[str] | None:
    stages = frozenset(s.strip() for s in (text or "").split(",") if s.strip())
    return stages or None


class Processor:
    """Parse, dedupe, window and flag raw records of any partition (state is passed in per partition)."""

    def __init__(self, settings: Settings, rules: RuleSet, noise: NoiseFilter | None = None) -> None:
        self.s = settings
        self.rules = rules
        self.noise = noise
        self.window_seconds = settings.window_seconds
        self.count_stages = parse_stages(settings.count_stages)
        self.raw_topic = settings.topic(config.RAW)
        self.c_event = codec("audit_event")
        self.c_verb = codec("verb_stats")
        self.c_status = codec("status_stats")
        self.c_alert = codec("alert")
        self.native = settings.native and native.available()
        # how long a memory entry can matter after its rule's watermark passed it (pipeline.agents.memory)
        self.memory_horizons: dict[str, int] = {}
        for r in rules.rules if rules is not None else ():
            if r.first_seen is not None:
                self.memory_horizons[r.id] = r.first_seen.lookback_us + r.first_seen.refresh_us
            elif r.sequence is not None:
                self.memory_horizons[r.parent or r.id] = r.sequence.window_us

    # ------------------------------------------------------------------------------------------------
    def process(
        self,
        state: PartitionState,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        timestamp_ms: int | None = None,
        now: float | None = None,
    ) -> RecordOutput:
        partition = state.partition
        hdr = H.to_dict(headers)
        cluster = hdr.get(H.CLUSTER) or (key.decode("utf-8", "replace") if key else "") or "default"
        source_id = f"{partition}:{offset}"
        out = RecordOutput(source_id, partition, cluster)
        origin = f"{self.raw_topic}:{partition}:{offset}"
        try:
            received_at = int(hdr.get(H.RECEIVED_AT) or 0) or (timestamp_ms or 0) * 1000
        except ValueError:
            received_at = (timestamp_ms or 0) * 1000
        if not value:
            out.n_bad = 1
            out.deadletters.append(deadletter.record("empty raw record", "worker", b"", cluster=cluster, origin=origin, received_at=received_at, limit=self.s.max_message_bytes))
            return out
        now = time.time() if now is None else now
        state.memory_horizons = self.memory_horizons
        updates = state.updates = M.Updates()
        try:
            self._process(state, out, offset, value, hdr, cluster, origin, received_at, now)
            if updates:
                src = offset
                out.memory = [(k, M.encode_update(k, src, owner, v)) for k, (owner, v) in updates.items()]
        except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen shape must not stop the worker
            log.exception("raw record %s could not be processed; sent to the dead-letter topic", origin)
            out = RecordOutput(source_id, partition, cluster, n_bad=1)
            out.deadletters.append(
                deadletter.record(f"worker error: {type(exc).__name__}: {exc}", "worker", value, cluster=cluster, origin=origin, received_at=received_at, limit=self.s.max_message_bytes)
            )
        state.records += 1
        state.last_offset = offset
        return out

    def _process(
        self,
        state: PartitionState,
        out: RecordOutput,
        offset: int,
        value: bytes,
        hdr: dict[str, str],
        cluster: str,
        origin: str,
        received_at: int,
        now: float,
    ) -> None:
        skip: set[int] = set()
        if hdr.get(H.SKIP_ITEMS):
            skip = {int(x) for x in hdr[H.SKIP_ITEMS].split(",") if x.strip().isdigit()}
        s = self.s
        max_obj, redact = s.max_object_bytes, s.redact_secrets
        events: list[tuple[dict[str, Any], dict[str, Any]]] = []  # (normalized, raw) per event
        fast = native.normalize_record(value, cluster, max_obj, redact) if self.native else None
        if fast is not None:
            self._process_native(state, out, offset, fast, skip, cluster, received_at, now)
            return
        items = list(read_events(value))
        if not any(isinstance(it, RawEvent) for it in items):
            reasons = "; ".join(f"line {it.line}: {it.reason}" for it in items if isinstance(it, ParseIssue))
            out.n_bad = 1
            out.deadletters.append(
                deadletter.record(f"no audit event in raw record: {reasons or 'empty'}"[:2000], "worker", value, cluster=cluster, origin=origin, received_at=received_at, limit=self.s.max_message_bytes)
            )
            return
        for index, item in enumerate(items):
            if index in skip:
                continue
            if isinstance(item, ParseIssue):
                out.n_bad += 1
                out.deadletters.append(
                    deadletter.record(item.reason, "worker", item.text, cluster=cluster, origin=f"{origin}:item{index}", received_at=received_at, limit=self.s.max_message_bytes)
                )
                continue
            out.n_events += 1
            raw = item.event
            try:
                # an entry may name its own cluster (GKE resource labels); every other shape has the record's
                events.append((normalize_event(raw, item.cluster or cluster, max_object_bytes=max_obj, redact=redact), raw))
            except NormalizeError as exc:
                out.n_bad += 1
                out.deadletters.append(
                    deadletter.record(str(exc), "worker", orjson.dumps(raw), cluster=cluster, origin=f"{origin}:item{index}", received_at=received_at, limit=self.s.max_message_bytes)
                )

        wsize = self.window_seconds
        wsize_us = wsize * 1_000_000  # window_start_us, inline
        count_stages = self.count_stages
        rules, noise = self.rules, self.noise
        seen = state.seen
        in_record: set[tuple[str, str, str]] = set()
        alerts: dict[str, Alert] = {}
        kept: list[dict[str, Any]] = []
        dropped_keys: list[tuple[str, str]] = []
        verbs, codes = WindowCounts(), WindowCounts()

        for ev, raw in events:
            c = ev["cluster"]  # the record's cluster, or the one a GKE entry names
            k = (ev["auditid"], ev["stage"])
            if (c, *k) in in_record or not seen.first_at((c, *k), offset, now):
                out.n_dup += 1
                continue
            in_record.add((c, *k))
            view = EventView(ev, raw)
            if rules is not None:
                for rule in rules.matches(view):
                    self._alert(state, rule, view, c, offset, out.source_id, alerts, now)
            keep = noise.keep(view) if noise is not None else True
            if count_stages is None or k[1] in count_stages:
                ts = ev["stage_ts"]
                ws = ts - ts % wsize_us
                verbs.add(c, ws, ev["verb"], not keep)
                codes.add(c, ws, ev["responsestatus_code"], not keep)
            if keep:
                kept.append(ev)
            else:
                out.n_dropped += 1
                dropped_keys.append(k)

        out.n_kept = len(kept)
        if kept or dropped_keys:
            enc = self.c_event.encode
            for ev in kept:
                ev["source_id"] = out.source_id
            joined = b"".join([enc(ev) for ev in kept])
            out.events_value = encode_event_batch(out.source_id, cluster, received_at, joined, len(kept), dropped_keys)
        if verbs:
            out.verb_value = self.c_verb.encode({"source_id": out.source_id, "window_seconds": wsize, "rows": verbs.rows("verb")})
            out.status_value = self.c_status.encode({"source_id": out.source_id, "window_seconds": wsize, "rows": codes.rows("code")})
        out.alerts = list(alerts.values())

    def _process_native(
        self,
        state: PartitionState,
        out: RecordOutput,
        offset: int,
        evs: list[Any],
        skip: set[int],
        cluster: str,
        received_at: int,
        now: float,
    ) -> None:
        """The same outputs as the Python loop of ``_process`` (tests compare them), with the per-record work --
        dedup and rule-index keys, window counts, the events array -- done once per record in native code."""
        rules, noise = self.rules, self.noise
        counted, n_dup = state.seen.first_sightings(evs, cluster, offset, now, skip)  # deduplicated events
        alerts: dict[str, Alert] = {}
        if rules is not None and counted:
            rkeys = native.rule_hashes(evs)
            by_hash = rules._by_hash
            for i in counted:
                # RuleSet.matches, inlined (this runs per event): index slot, then the slot's guard memo
                slot = by_hash.get(rkeys[i]) or rules.slot_hashed(rkeys[i], evs[i])
                if not slot.rules:
                    continue
                ev = evs[i]
                if slot.key is None:
                    survivors = [(r, r.match) for r in slot.rules]
                else:
                    mk = ev.values_hash(slot.hash_fields)
                    survivors = slot.memo.get(mk)
                    if survivors is None:
                        survivors = slot.learn(mk, EventView(ev))
                if survivors:
                    view = EventView(ev)
                    for rule, test in survivors:  # test: what the rule's guard leaves to check (None: nothing)
                        if test is None or test(view):
                            self._alert(state, rule, view, cluster, offset, out.source_id, alerts, now)
        # counted events count in the windows, kept or dropped by the noise filter
        kept: list[int] = counted
        dropped: list[bool] = []  # per counted event; empty: none dropped
        dropped_keys: list[tuple[str, str]] = []
        if noise is not None and counted:
            dropped = [not noise.keep(EventView(evs[i])) for i in counted]
            kept = [i for i, d in zip(counted, dropped, strict=True) if not d]
            dropped_keys = [(evs[i]["auditid"], evs[i]["stage"]) for i, d in zip(counted, dropped, strict=True) if d]
        out.n_events = len(evs) - len(skip & set(range(len(evs))))
        out.n_dup = n_dup
        out.n_kept = len(kept)
        out.n_dropped = len(dropped_keys)
        if kept or dropped_keys:
            joined = native.join_avro(evs, kept, source_id_suffix(out.source_id))
            out.events_value = encode_event_batch(out.source_id, cluster, received_at, joined, len(kept), dropped_keys)
        if counted:
            stages = sorted(self.count_stages) if self.count_stages is not None else None
            verbs, codes = WindowCounts(), WindowCounts()
            verbs.counts, codes.counts = native.window_counts(
                evs, counted, dropped, cluster, self.window_seconds * 1_000_000, stages
            )
            wsize = self.window_seconds
            if verbs:
                out.verb_value = self.c_verb.encode({"source_id": out.source_id, "window_seconds": wsize, "rows": verbs.rows("verb")})
                out.status_value = self.c_status.encode({"source_id": out.source_id, "window_seconds": wsize, "rows": codes.rows("code")})
        out.alerts = list(alerts.values())

    def _alert(
        self,
        state: PartitionState,
        rule: Rule,
        view: EventView,
        cluster: str,
        offset: int,
        source_id: str,
        alerts: dict[str, Alert],
        now: float,
    ) -> None:
        ev = view.ev
        window_start, count, group = 0, 0, ""
        kind = rule.kind
        if kind == "event":
            aid = alert_id(rule.id, cluster, ev["auditid"])
        elif kind == "threshold":
            window_start = window_start_us(ev["stage_ts"], rule.window_seconds or self.window_seconds)
            group = rule.group_key(view)
            count = state.count_threshold((rule.id, cluster, group, window_start), now)
            if count < rule.threshold:
                return
            aid = alert_id(rule.id, cluster, group, window_start)
        elif kind == "first_seen":
            assert rule.first_seen is not None
            term = M.first_seen_step(state.memory, state.updates, rule.id, rule.first_seen, view, cluster, offset)
            if term is None:
                return
            group = term
            aid = alert_id(rule.id, cluster, ev["auditid"])
        elif kind == "after":
            assert rule.sequence is not None
            M.sequence_after_step(state.memory, state.updates, rule.parent, rule.sequence, view, cluster, offset)
            return
        else:  # sequence
            assert rule.sequence is not None
            done = M.sequence_step(state.memory, state.updates, rule.id, rule.sequence, view, cluster, offset)
            if done is None:
                return
            group = f"{done[0]} after {done[1]}"
            aid = alert_id(rule.id, cluster, done[0], done[1])
        if aid in alerts or not state.alerts.first_at(aid, offset, now):
            return
        alerts[aid] = Alert(aid, alert_record(aid, rule, ev, source_id, window_start, count, group))

    # ------------------------------------------------------------------------------------------------
    def replay_thresholds(self, state: PartitionState, ev: dict[str, Any], now: float) -> None:
        """Re-count threshold rules for an event read back from the events topic (rebuild)."""
        view = EventView(ev)
        for rule in self.rules.matches(view) if self.rules is not None else ():
            if rule.kind == "threshold":
                ws = window_start_us(ev["stage_ts"], rule.window_seconds or self.window_seconds)
                state.count_threshold((rule.id, ev["cluster"], rule.group_key(view), ws), now)

    def encode_alert(self, alert: Alert) -> tuple[bytes, bytes]:
        """(Avro value, JSON value) of an alert."""
        if self.native:
            try:
                return native.encode_alert(alert.record), orjson.dumps(alert.record)
            except Exception:  # noqa: BLE001, S110 - anything unusual: the codec decides (same bytes or its error)
                pass
        return self.c_alert.encode(alert.record), orjson.dumps(alert.record)


def alert_record(
    aid: str, rule: Rule, ev: dict[str, Any], source_id: str, window_start: int = 0, count: int = 0, group: str = ""
) -> dict[str, Any]:
    return {
        "alert_id": aid,
        "rule_id": rule.id,
        "title": rule.title,
        "severity": rule.severity,
        "cluster": ev["cluster"],
        "ts": ev["stage_ts"],
        "auditid": ev["auditid"],
        "stage": ev["stage"],
        "username": ev["username"],
        "usergroups": ev["usergroups"],
        "impersonated_username": ev["impersonated_username"],
        "sourceips": ev["sourceips"],
        "useragent": ev["useragent"],
        "verb": ev["verb"],
        "objectref_resource": ev["objectref_resource"],
        "objectref_subresource": ev["objectref_subresource"],
        "objectref_namespace": ev["objectref_namespace"],
        "objectref_name": ev["objectref_name"],
        "objectref_apigroup": ev["objectref_apigroup"],
        "request_uri": ev["request_uri"],
        "responsestatus_code": ev["responsestatus_code"],
        "decision": ev["decision"],
        "decision_reason": ev["decision_reason"],
        "window_start": window_start,
        "count": count,
        "group_key": group,
        "tags": list(rule.tags),
        "source_id": source_id,
    }
