"""Worker-shaped outputs built directly from audit events (tests and benchmarks of the sink; no worker needed).

A "source" is one raw record: its events go out as one EventBatch, and its per-window counts as one VerbStats and
one StatusStats record, all with the same source_id, exactly as the contract in README-DEV-CONTRACTS.md says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from pipeline import config
from pipeline.config import Settings
from pipeline.models.avro import codec
from pipeline.models.normalize import normalize_event
from pipeline.models.readers import RawEvent, read_events


def sample_sources(samples: Path) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(cluster, normalized events) per sample file; the cluster is the folder name."""
    for path in sorted(p for p in samples.glob("*/*") if p.is_file() and p.suffix != ".md"):
        events = [normalize_event(item.event, path.parent.name) for item in read_events(path.read_bytes())
                  if isinstance(item, RawEvent)]  # fmt: skip
        yield path.parent.name, events


def window_start(ts_us: int, window_seconds: int) -> int:
    w = window_seconds * 1_000_000
    return ts_us - ts_us % w


def stats_records(
    source_id: str, events: list[dict[str, Any]], window_seconds: int = 60
) -> tuple[dict, dict]:
    verbs: Counter = Counter()
    codes: Counter = Counter()
    for ev in events:
        ws = window_start(ev["request_received_ts"], window_seconds)
        verbs[(ev["cluster"], ws, ev["verb"])] += 1
        codes[(ev["cluster"], ws, ev["responsestatus_code"])] += 1
    verb = {"source_id": source_id, "window_seconds": window_seconds,
            "rows": [{"cluster": c, "window_start": w, "verb": v, "count": n, "dropped": 0}
                     for (c, w, v), n in sorted(verbs.items())]}  # fmt: skip
    status = {"source_id": source_id, "window_seconds": window_seconds,
              "rows": [{"cluster": c, "window_start": w, "code": k, "count": n, "dropped": 0}
                       for (c, w, k), n in sorted(codes.items())]}  # fmt: skip
    return verb, status


def produce_source(
    producer: Producer,
    s: Settings,
    partition: int,
    source_id: str,
    cluster: str,
    events: list[dict[str, Any]],
    *,
    stats: bool = True,
    received_at: int = 0,
    events_topic: bool = True,
) -> None:
    """Queue the EventBatch of one source on `partition` of the events topic, its stats on the stats topics' one
    partition (call flush())."""
    if events_topic:
        eb = codec("event_batch")
        producer.produce(s.topic(config.EVENTS), eb.encode({"source_id": source_id, "cluster": cluster,
                         "received_at": received_at, "events": events}), key=cluster.encode(),
                         headers=eb.headers, partition=partition)  # fmt: skip
    if stats:
        verb, status = stats_records(source_id, events)
        for stem, topic, rec in (
            ("verb_stats", config.VERB_STATS, verb),
            ("status_stats", config.STATUS_STATS, status),
        ):
            c = codec(stem)
            producer.produce(
                s.topic(topic), c.encode(rec), key=cluster.encode(), headers=c.headers, partition=0  # as the worker
            )


def chunks(events: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]
