"""Create the project's topics idempotently (``python -m pipeline.kafka.topics`` / ``kaudit topics``)."""

from __future__ import annotations

import sys
import time

from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from pipeline import config
from pipeline.config import Settings, get_settings


def topic_specs(s: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """name -> (partitions, config). Raw, events and memory share a partition count: the worker keeps a raw
    partition's events and memory on the same partition number so state can be rebuilt from them. The stats and
    alerts topics have one partition: their records are small, only the sink reads them (deduplicated by source
    id or alert id), and the broker's cost is per produce request, which librdkafka sends per partition."""
    big = {"max.message.bytes": str(s.max_message_bytes)}
    p = s.raw_partitions
    return {
        s.topic(config.RAW): (p, big),
        s.topic(config.EVENTS): (p, big),
        s.topic(config.VERB_STATS): (1, {}),
        s.topic(config.STATUS_STATS): (1, {}),
        s.topic(config.DEADLETTER): (1, big),
        s.topic(config.ALERTS): (1, {}),
        s.topic(config.ALERTS_JSON): (1, {}),
        # rules with memory: compacted per key; records younger than a day are never compacted, so a replay
        # always finds every record it needs (pipeline/agents/memory.py)
        s.topic(config.MEMORY): (p, {
            "cleanup.policy": "compact,delete",
            "min.compaction.lag.ms": str(86_400_000),
            "retention.ms": str(s.memory_retention_days * 86_400_000),
        }),  # fmt: skip
    }


def ensure_topics(s: Settings | None = None, timeout: float = 30.0) -> list[str]:
    """Create missing topics, grow partition counts that are too small; return what changed."""
    s = s or get_settings()
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap})
    existing = admin.list_topics(timeout=timeout).topics
    changed: list[str] = []
    replicated = {"min.insync.replicas": str(s.kafka_min_insync_replicas)} if s.kafka_replication_factor > 1 else {}
    new = [
        NewTopic(name, num_partitions=parts, replication_factor=s.kafka_replication_factor, config={**cfg, **replicated})
        for name, (parts, cfg) in topic_specs(s).items()
        if name not in existing
    ]
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result()
                changed.append(f"created {name}")
            except Exception as exc:  # noqa: BLE001
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
    grow = [
        NewPartitions(name, parts)
        for name, (parts, _) in topic_specs(s).items()
        if name in existing and len(existing[name].partitions) < parts
    ]
    if grow:
        for name, fut in admin.create_partitions(grow).items():
            fut.result()
            changed.append(f"grew {name}")
    if changed:
        _wait_visible(admin, topic_specs(s), timeout)
    return changed


def _wait_visible(admin: AdminClient, specs: dict[str, tuple[int, dict[str, str]]], timeout: float) -> None:
    """Creation is asynchronous in Kafka: wait until metadata shows every topic with its partitions and leaders."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(timeout=timeout).topics
        if all(
            name in md
            and len(md[name].partitions) >= parts
            and all(p.leader >= 0 for p in md[name].partitions.values())
            for name, (parts, _) in specs.items()
        ):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics not visible after {timeout:.0f} s")


def main() -> int:
    try:
        changed = ensure_topics()
    except Exception as exc:  # noqa: BLE001
        print(f"kaudit: cannot create topics on {get_settings().kafka_bootstrap}: {exc}", file=sys.stderr)
        return 1
    for line in changed or ["topics: all present"]:
        print(f"topics: {line}" if not line.startswith("topics:") else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
