"""kaudit config: print every setting, its environment variable, value and meaning."""

from __future__ import annotations

import argparse

HELP = "show every setting (KAUDIT_* environment variables) with its value and meaning"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from pipeline.config import Settings, get_settings

    s = get_settings()
    for name, field in Settings.model_fields.items():
        print(f"KAUDIT_{name.upper():<24} = {getattr(s, name)!s:<40}  {field.description or ''}")
    return 0
