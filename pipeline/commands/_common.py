"""Helpers shared by subcommands: applying flags onto Settings."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pipeline.config import Settings, get_settings


def settings_from(args: argparse.Namespace, **mapping: str) -> Settings:
    """Settings from the environment, overridden by the given flags (setting name -> args attribute)."""
    base = get_settings()
    updates: dict[str, Any] = {}
    for setting, attr in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            updates[setting] = value
    return base.model_copy(update=updates) if updates else base


def add_kafka_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kafka", metavar="HOST:PORT", help=f"Kafka bootstrap (KAUDIT_KAFKA_BOOTSTRAP, default {Settings().kafka_bootstrap})"
    )


def add_clickhouse_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--clickhouse",
        metavar="DSN",
        help="ClickHouse DSN (KAUDIT_CLICKHOUSE_DSN; default embedded chDB under KAUDIT_VAR/chdb; or http://host:8123/db)",
    )


def env_default(name: str, default: str) -> str:
    return os.environ.get(name, default)
