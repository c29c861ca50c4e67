"""Rules with memory: first-seen terms and sequences, with state that is exact under restarts and rebalances.

Rule syntax (in a rules file; see ``pipeline.agents.rules``):

    first_seen:                       # fire when this combination appears for the first time within lookback
      terms: [username, sourceip]     # fields (any accessor of pipeline.agents.conditions)
      lookback_days: 30               # default 30
      learning_days: 7                # per cluster, from the first event this rule saw there (default 7)
      refresh_hours: 24               # resolution of the memory (default 24, at most lookback/2)

    sequence:                         # the rule's `match` is B; fire on B after A by the same principal
      after: {match: {...}, key: request_subjects}   # A, and its join key (a field or a template)
      key: username                   # B's join key
      window_seconds: 3600            # B within this many seconds (event time) after A

A key is a field name or a template such as ``"system:serviceaccount:{objectref_namespace}:{objectref_name}"``;
fields with several values (request_subjects, usergroups) give several keys.

Semantics (event time = stageTimestamp). Each (rule, cluster) has a clock: the learning start (earliest event
the rule saw) and a watermark W (latest event time, advanced in steps of ``refresh``). A first-seen term is new
at time t if it was never seen, or last seen before ``max(t, W) - lookback``; it alerts once learning is over
(``t >= start + learning``). The last-seen time of a term is rewritten only when it advances by ``refresh``, so
"first in 30 days" has a resolution of a day and a busy term costs one memory write a day, not one per event.
A sequence alerts once per A (the first matching B within the window); a newer A for the same key replaces it.

Exactness (README-DEV-CONTRACTS.md): every change is written, with the raw offset it came from, to the
``k8s-audit-memory`` topic on the raw partition's number (compacted, one Kafka record per memory key). The
worker rebuilds a partition's memory on assignment by reading that partition and keeping, per key, the value
written by the highest source offset below the resume offset: the state before the first replayed record, so
the replay re-decides exactly as the first run did. Within a process, each key also keeps the value before its
last change, so the last record replayed on the same state decides the same (deeper replays go through the
rebuild, which the worker does on every assignment). Entries that can no longer
change a decision (last seen before ``W - lookback - refresh``) are forgotten; nothing else is. The topic's
``min.compaction.lag.ms`` (a day) keeps every record a replay could need.

Bounded: a key is a 128-bit hash; an entry costs about 320 bytes in memory (measured by
``tests/test_agents_memory.py``) and about 110 bytes on the topic. ``KAUDIT_MEMORY_MAX_KEYS`` caps a
partition's entries: past it the oldest are dropped (logged), the only case in which a term can alert twice.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.agents.conditions import (
    LIST_FIELDS,
    NORMALIZED_FIELDS,
    Accessor,
    ConditionError,
    EventView,
    Many,
    Predicate,
    accessor,
)

log = logging.getLogger("kaudit.worker.memory")

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000
HISTORY = 2  # values kept per key by source offset (in-process replays)
SEED_SOURCE = -1  # memory written by a warehouse seed counts as older than any raw record


class MemoryError_(ValueError):
    """A first_seen / sequence block that cannot be used; the message names the field."""


_TEMPLATE = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class KeyExpr:
    """A join or term key: one field, or a template with {field} parts; yields every value (a list field gives
    several)."""

    text: str
    parts: tuple[str, ...]  # literal text between fields (len(fields) + 1), or () for a plain field
    getters: tuple[Accessor, ...]
    scalar: str = ""  # a single-valued normalized field: read directly (this runs per matching event)

    def values(self, view: EventView) -> list[str]:
        if self.scalar:
            x = view.ev.get(self.scalar)
            if type(x) is str:
                return [x] if x else []
            return [] if x is None or x == "" else [str(x)]
        vals = [_texts(g(view)) for g in self.getters]
        if not self.parts:
            return vals[0]
        out = []
        for combo in itertools.islice(itertools.product(*vals), 16):
            out.append("".join(p + v for p, v in zip(self.parts, (*combo, ""), strict=True)))
        return out


def _texts(x: Any) -> list[str]:
    items = x if isinstance(x, Many | list) else [x]
    return [i if isinstance(i, str) else str(i) for i in items if i is not None and i != ""]


def key_expr(text: Any, where: str) -> KeyExpr:
    if not isinstance(text, str) or not text:
        raise MemoryError_(f"{where}: needs a field name or a template like \"system:serviceaccount:{{objectref_namespace}}:{{objectref_name}}\"")
    try:
        if "{" not in text:
            scalar = text if text in NORMALIZED_FIELDS and text not in LIST_FIELDS else ""
            return KeyExpr(text, (), (accessor(text, where),), scalar)
        fields = _TEMPLATE.findall(text)
        if not fields:
            raise MemoryError_(f"{where}: template {text!r} names no {{field}}")
        parts = tuple(_TEMPLATE.split(text)[0::2])
        return KeyExpr(text, parts, tuple(accessor(f, f"{where}.{f}") for f in fields))
    except ConditionError as exc:
        raise MemoryError_(f"{exc.where}: {exc.message}") from None


@dataclass(frozen=True)
class FirstSeen:
    terms: tuple[KeyExpr, ...]
    lookback_us: int
    learning_us: int
    refresh_us: int


@dataclass(frozen=True)
class Sequence:
    after: Predicate
    after_spec: dict[str, Any]
    after_key: KeyExpr
    key: KeyExpr
    window_us: int


def _number(block: dict[str, Any], name: str, default: float, where: str, minimum: float = 0) -> float:
    v = block.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < minimum:
        raise MemoryError_(f"{where}.{name}: needs a number >= {minimum:g}, got {v!r}")
    return float(v)


def parse_first_seen(block: Any, where: str) -> FirstSeen:
    if not isinstance(block, dict) or set(block) - {"terms", "lookback_days", "learning_days", "refresh_hours"}:
        raise MemoryError_(f"{where}: needs {{terms: [fields], lookback_days: N, learning_days: N, refresh_hours: N}}")
    terms = block.get("terms")
    terms = [terms] if isinstance(terms, str) else terms
    if not isinstance(terms, list) or not terms:
        raise MemoryError_(f"{where}.terms: needs a list of fields")
    exprs = tuple(key_expr(t, f"{where}.terms") for t in terms)
    lookback = int(_number(block, "lookback_days", 30, where, 0.001) * DAY_US)
    learning = int(_number(block, "learning_days", 7, where) * DAY_US)
    refresh = int(_number(block, "refresh_hours", 24, where, 0.001) * HOUR_US)
    return FirstSeen(exprs, lookback, learning, min(refresh, lookback // 2))


def parse_sequence(block: Any, where: str, compile_match: Any) -> Sequence:
    if not isinstance(block, dict) or set(block) - {"after", "key", "window_seconds"} or "after" not in block:
        raise MemoryError_(f"{where}: needs {{after: {{match: {{...}}, key: FIELD}}, key: FIELD, window_seconds: N}}")
    after = block["after"]
    if not isinstance(after, dict) or set(after) - {"match", "key"} or "match" not in after:
        raise MemoryError_(f"{where}.after: needs {{match: {{...}}, key: FIELD}}")
    window = _number(block, "window_seconds", 3600, where, 1)
    return Sequence(
        after=compile_match(after["match"], f"{where}.after.match"),
        after_spec=after["match"],
        after_key=key_expr(after.get("key", "username"), f"{where}.after.key"),
        key=key_expr(block.get("key", "username"), f"{where}.key"),
        window_us=int(window * 1_000_000),
    )


_KEYS: dict[tuple[str, str, str, str], bytes] = {}  # terms repeat: hash each once (bounded)


def mkey(rule_id: str, cluster: str, kind: str, term: str) -> bytes:
    """A memory key: 128-bit hash of (rule, cluster, kind, term)."""
    t = (rule_id, cluster, kind, term)
    k = _KEYS.get(t)
    if k is None:
        k = hashlib.blake2b(f"{rule_id}\x00{cluster}\x00{kind}\x00{term}".encode(), digest_size=16).digest()
        if len(_KEYS) >= 50_000:
            _KEYS.clear()
        _KEYS[t] = k
    return k


class Memory:
    """One raw partition's memory: key -> value, with the last few values by source offset.

    Values are tuples: clock (start_us, watermark_us); term (last_seen_us,); sequence A
    (ts_us, auditid, fired). ``owner[key]`` names (rule_id, cluster, kind) for eviction and the topic record."""

    __slots__ = ("entries", "owner", "max_keys", "dropped", "_owners", "quiet", "clock_ver")

    def __init__(self, max_keys: int = 5_000_000) -> None:
        # key -> (src, value) or a list of (src, value) sorted by src (after an in-process replay)
        self.entries: dict[bytes, Any] = {}
        self.owner: dict[bytes, tuple[str, str, str]] = {}
        self.max_keys = max_keys
        self.dropped = 0
        self._owners: dict[tuple[str, str, str], tuple[str, str, str]] = {}  # one tuple per (rule, cluster, kind)
        # term key -> (lo, hi, src, clock version): events of that term with lo <= ts <= hi change nothing, as long
        # as neither the term nor its clock changed (``note`` drops/bumps them) and the record is newer than src
        self.quiet: dict[bytes, tuple[int, int, int, int]] = {}
        self.clock_ver: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes, src: int) -> Any:
        """The value as of just before raw offset ``src``."""
        e = self.entries.get(key)
        if e is None:
            return None
        if type(e) is tuple:
            return e[1] if e[0] < src else None
        for s, v in reversed(e):
            if s < src:
                return v
        return None

    def put(self, key: bytes, src: int, value: Any, owner: tuple[str, str, str]) -> None:
        """Write ``value`` as of raw offset ``src``, keeping the previous value (so that the record that wrote
        it, or the next one, replayed on this state decides as before)."""
        e = self.entries.get(key)
        if e is None:
            self.entries[key] = (src, value)
            self.owner[key] = self._owners.setdefault(owner, owner)
            return
        hist = [e] if type(e) is tuple else e
        hist = [h for h in hist if h[0] != src]
        hist.append((src, value))
        if len(hist) > 1 and hist[-2][0] > src:
            hist.sort(key=lambda h: h[0])
        hist = hist[-HISTORY:]
        self.entries[key] = hist[0] if len(hist) == 1 else hist

    def src_of(self, key: bytes) -> int:
        e = self.entries.get(key)
        if e is None:
            return -2
        return e[0] if type(e) is tuple else e[-1][0]

    def latest(self, key: bytes) -> Any:
        e = self.entries.get(key)
        if e is None:
            return None
        return e[1] if type(e) is tuple else e[-1][1]

    def load(self, key: bytes, src: int, value: Any, owner: tuple[str, str, str]) -> None:
        """A value read back from the memory topic: keep the one of the highest source offset."""
        e = self.entries.get(key)
        if e is not None and type(e) is not tuple:
            e = e[-1]
        if e is None or e[0] <= src:
            self.entries[key] = (src, value)
            self.owner[key] = self._owners.setdefault(owner, owner)

    def forget(self, horizons: dict[str, int]) -> int:
        """Drop entries that can no longer change a decision: older than their (rule, cluster) watermark minus
        the rule's horizon (``horizons``: rule id -> us). Then enforce max_keys (oldest first). Returns the
        number dropped."""
        marks: dict[tuple[str, str], int] = {}
        for key, (rule_id, cluster, kind) in self.owner.items():
            if kind == "clock":
                marks[(rule_id, cluster)] = self.latest(key)[1]
        drop = []
        for key, (rule_id, cluster, kind) in self.owner.items():
            if kind == "clock":
                continue
            wm, horizon = marks.get((rule_id, cluster)), horizons.get(rule_id)
            if wm is None or horizon is None:
                continue
            if self.latest(key)[0] < wm - horizon:
                drop.append(key)
        for key in drop:
            del self.entries[key]
            del self.owner[key]
        self.quiet.clear()
        n = len(drop)
        if len(self.entries) > self.max_keys:
            excess = len(self.entries) - int(self.max_keys * 0.9)
            by_age = sorted(
                (self.latest(k)[0], k) for k, o in self.owner.items() if o[2] != "clock"
            )[:excess]
            for _, key in by_age:
                del self.entries[key]
                del self.owner[key]
            self.dropped += len(by_age)
            n += len(by_age)
            log.warning("memory over %d keys: dropped the %d oldest (they may alert again)", self.max_keys, len(by_age))
        return n


def encode_update(key: bytes, src: int, owner: tuple[str, str, str], value: Any) -> bytes:
    """The memory-topic value of one change (JSON: small, readable with kcat)."""
    rule_id, cluster, kind = owner
    return orjson.dumps({"s": src, "r": rule_id, "c": cluster, "k": kind, "v": list(value)})


def decode_update(value: bytes) -> tuple[int, tuple[str, str, str], tuple]:
    d = orjson.loads(value)
    return int(d["s"]), (str(d["r"]), str(d["c"]), str(d["k"])), tuple(d["v"])


class Updates(dict):
    """One raw record's memory changes: key -> (owner, value), in first-change order (deterministic)."""


def read(mem: Memory, updates: Updates, key: bytes, src: int) -> Any:
    """A key's value for the record at ``src``: its own earlier change, else the value before the record."""
    u = updates.get(key)
    return u[1] if u is not None else mem.get(key, src)


def note(mem: Memory, updates: Updates, key: bytes, src: int, value: tuple, owner: tuple[str, str, str]) -> None:
    mem.put(key, src, value, owner)
    updates[key] = (owner, value)
    if owner[2] == "clock":
        rc = (owner[0], owner[1])
        mem.clock_ver[rc] = mem.clock_ver.get(rc, 0) + 1
    else:
        mem.quiet.pop(key, None)


def clock_step(
    mem: Memory, updates: Updates, rule_id: str, cluster: str, ts: int, src: int, refresh_us: int
) -> tuple[int, int, int]:
    """Advance a (rule, cluster) clock with an event at ``ts``; (start, watermark) before it, and its key...
    returns (start_before_or_ts, watermark_before_or_ts, start_after)."""
    ck = mkey(rule_id, cluster, "clock", "")
    clock = read(mem, updates, ck, src)
    owner = (rule_id, cluster, "clock")
    if clock is None:
        note(mem, updates, ck, src, (ts, ts), owner)
        return ts, ts, ts
    start, wm = clock
    nstart = min(start, ts)
    nwm = ts if ts > wm + refresh_us else wm
    if (nstart, nwm) != (start, wm):
        note(mem, updates, ck, src, (nstart, nwm), owner)
    return start, wm, nstart


def first_seen_step(
    mem: Memory, updates: Updates, rule_id: str, spec: FirstSeen, view: EventView, cluster: str, src: int
) -> str | None:
    """Record the event's terms; the term text if this is a first sighting after learning (alert), else None."""
    ev = view.ev
    ts = ev["stage_ts"]
    values = [e.values(view) for e in spec.terms]
    if any(not v for v in values):
        return None  # an event without the term (e.g. no source IP) is not a sighting
    single = all(len(v) == 1 for v in values)
    if single:  # the common case: a term seen recently, nothing to change (the per-event cost of a busy term)
        k = mkey(rule_id, cluster, "term", "|".join(v[0] for v in values))
        q = mem.quiet.get(k)
        if q is not None and q[0] <= ts <= q[1] and q[2] < src and q[3] == mem.clock_ver.get((rule_id, cluster), 0):
            return None
    n_updates = len(updates)
    ck = mkey(rule_id, cluster, "clock", "")
    _, wm, start = clock_step(mem, updates, rule_id, cluster, ts, src, spec.refresh_us)
    fire = None
    owner = (rule_id, cluster, "term")
    combos = [[v[0] for v in values]] if single else itertools.islice(itertools.product(*values), 16)
    for combo in combos:
        term = "|".join(combo)
        k = mkey(rule_id, cluster, "term", term)
        last = read(mem, updates, k, src)
        if last is None or last[0] < max(ts, wm) - spec.lookback_us:
            note(mem, updates, k, src, (ts,), owner)
            if ts >= start + spec.learning_us and fire is None:
                fire = term
        elif ts > last[0] + spec.refresh_us:
            note(mem, updates, k, src, (ts,), owner)
        elif single and len(updates) == n_updates and k not in updates and ck not in updates:
            # nothing changed and both values come from earlier records: remember for how long that holds
            hi = min(wm + spec.refresh_us, last[0] + spec.refresh_us, last[0] + spec.lookback_us)
            if len(mem.quiet) >= 1_000_000:
                mem.quiet.clear()
            mem.quiet[k] = (start, hi, max(mem.src_of(k), mem.src_of(ck)), mem.clock_ver.get((rule_id, cluster), 0))
    return fire


def sequence_after_step(
    mem: Memory, updates: Updates, rule_id: str, spec: Sequence, view: EventView, cluster: str, src: int
) -> None:
    """Remember an A event under each of its join keys (the newest A by event time wins)."""
    ev = view.ev
    ts = ev["stage_ts"]
    clock_step(mem, updates, rule_id, cluster, ts, src, spec.window_us)
    owner = (rule_id, cluster, "after")
    for j in spec.after_key.values(view):
        k = mkey(rule_id, cluster, "after", j)
        prev = read(mem, updates, k, src)
        if prev is None or prev[0] <= ts:
            note(mem, updates, k, src, (ts, ev["auditid"], False), owner)


def sequence_step(
    mem: Memory, updates: Updates, rule_id: str, spec: Sequence, view: EventView, cluster: str, src: int
) -> tuple[str, str] | None:
    """A B event: (join key, A's auditID) when it completes a sequence (then that A is spent), else None."""
    ev = view.ev
    ts = ev["stage_ts"]
    owner = (rule_id, cluster, "after")
    clock = read(mem, updates, mkey(rule_id, cluster, "clock", ""), src)
    if clock is None:
        return None  # no A yet in this cluster
    oldest = clock[1] - spec.window_us  # an A older than this can never complete a sequence (so it may be forgotten)
    for j in spec.key.values(view):
        k = mkey(rule_id, cluster, "after", j)
        a = read(mem, updates, k, src)
        if a is None or a[2] or a[1] == ev["auditid"]:
            continue
        if a[0] <= ts <= a[0] + spec.window_us and a[0] >= oldest:
            note(mem, updates, k, src, (a[0], a[1], True), owner)
            return j, a[1]
    return None
