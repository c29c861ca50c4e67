"""kaudit topics: create the project's Kafka topics (idempotent)."""

from __future__ import annotations

import argparse

from pipeline.commands._common import add_kafka_flag, settings_from

HELP = "create the Kafka topics (idempotent)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_kafka_flag(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.kafka.topics import ensure_topics

    s = settings_from(args, kafka_bootstrap="kafka")
    for line in ensure_topics(s) or ["all topics present"]:
        print(f"topics: {line}")
    return 0
