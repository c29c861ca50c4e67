"""Through the real worker process (real Kafka): raw records holding every HAND-MADE credential class
(tests/data/handmade/credentials.py), as an EventList (the native path when built), as JSON lines (with a
truncated line: the Python path), with items the bridge already dead-lettered,
bad events (dead letters) and a truncated line; every byte of every downstream topic (values, keys, headers) is
searched for each credential, plain, base64 and base64url."""

from __future__ import annotations

import copy
import time

import orjson
import pytest

from pipeline import config
from pipeline.agents import testing as T
from pipeline.config import Settings
from tests.data.handmade.credentials import CASES, EXPECTED, all_secret_forms

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

DOWNSTREAM = (config.EVENTS, config.VERB_STATS, config.STATUS_STATS, config.ALERTS, config.ALERTS_JSON,
              config.DEADLETTER)  # fmt: skip


def _bytes(msgs) -> bytes:
    return b"".join((m.value() or b"") + (m.key() or b"") + b"".join(v for _, v in (m.headers() or [])) for m in msgs)


def test_no_credential_in_any_downstream_topic(settings: Settings):
    s = settings
    events = [copy.deepcopy(CASES[n]) for n in sorted(CASES)]
    lines = b"".join(orjson.dumps({**e, "auditID": e["auditID"] + "-l"}) + b"\n" for e in events)
    bad = [{k: v for k, v in e.items() if k != "auditID"} for e in events]  # dead letters, one per class
    truncated = orjson.dumps(events[0])[:-30] + b"\n"  # not JSON
    # the unreadable last-applied case sends its record the Python way: apart, so the first takes the native path
    fallback = [e for e in events if e["auditID"] == CASES["secret-unreadable-last-applied"]["auditID"]]
    records = [
        T.raw_record("red", T.eventlist([e for e in events if e not in fallback])),
        T.raw_record("red", T.eventlist(fallback)),
        T.raw_record("red", lines + truncated, fmt="jsonlines"),
        T.raw_record("red", T.eventlist([*bad, events[1] | {"auditID": "kept"}])),
        T.raw_record("red", T.eventlist([events[2] | {"auditID": "skipped"}]), skip_items="0"),
    ]
    T.produce(s, records)
    w = T.start_worker(s, "redact")
    try:
        deadline = time.monotonic() + 240
        stored: list[dict] = []
        while time.monotonic() < deadline:
            assert w.poll() is None, f"worker exited with {w.returncode}; see its log under {s.var}"
            stored = [e for b in T.decode_all("event_batch", T.read_all(s, config.EVENTS, idle=1.0, timeout=20))
                      for e in b["events"]]  # fmt: skip
            if len(stored) >= 2 * len(events) + 1:
                break
            time.sleep(1.0)
        assert len(stored) == 2 * len(events) + 1
        by_id = {e["auditid"]: e["redacted"] for e in stored}
        for n, e in CASES.items():
            assert by_id[e["auditID"]] == by_id[e["auditID"] + "-l"] == EXPECTED[n]
        forms = all_secret_forms()
        raw = _bytes(T.read_all(s, config.RAW, idle=1.0))
        assert any(f in raw for f in forms)  # the raw topic keeps the cluster's bytes by design
        for topic in DOWNSTREAM:
            msgs = T.read_all(s, topic, idle=1.0, timeout=30)
            assert msgs, f"nothing in {topic}"
            found = [f for f in forms if f in _bytes(msgs)]
            assert not found, f"{topic} holds {found[:3]}"
        dead = [orjson.loads(m.value()) for m in T.read_all(s, config.DEADLETTER, idle=1.0)]
        assert len(dead) == len(bad) + 1
        assert sum(d["withheld"] for d in dead) == 1
        assert sum(bool(d["redacted"]) for d in dead) == len(bad)
    finally:
        assert T.stop_worker(w) == 0
