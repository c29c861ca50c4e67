"""The ``kaudit`` command. Each subcommand lives in ``pipeline/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``; imports stay lazy so that
``kaudit --help`` is fast."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# name -> module; order is the order shown in --help (roughly the data flow)
COMMANDS = {
    "bridge": "pipeline.commands.bridge",
    "ship": "pipeline.commands.ship",
    "replay": "pipeline.commands.replay",
    "worker": "pipeline.commands.worker",
    "sink": "pipeline.commands.sink",
    "query": "pipeline.commands.query",
    "search": "pipeline.commands.search",
    "alert": "pipeline.commands.alert",
    "sql": "pipeline.commands.sql",
    "serve": "pipeline.commands.serve",
    "rbac": "pipeline.commands.rbac",
    "notify": "pipeline.commands.notify",
    "volume": "pipeline.commands.volume",  # volume helper: where audit volume comes from
    "policy": "pipeline.commands.policy",  # volume helper: audit policy suggestions
    "normalize": "pipeline.commands.normalize",
    "topics": "pipeline.commands.topics",
    "migrate": "pipeline.commands.migrate",
    "config": "pipeline.commands.config",
    "token": "pipeline.commands.token",
}

DESCRIPTION = """\
kaudit: Kubernetes audit events from many clusters -> Kafka -> stream processing -> ClickHouse.

  kube-apiserver --webhook--> bridge --> Kafka --> worker (parse, dedupe, window, flag) --> sink --> ClickHouse
  audit.log ------> ship ----/                                                              query, sql, serve

Every option also has an environment variable KAUDIT_<NAME>; `kaudit config` shows the effective values.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaudit", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, os.environ.get("KAUDIT_LOG_LEVEL", "INFO").upper(), 20)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
