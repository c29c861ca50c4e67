"""What audit_events costs chDB per row to insert and to merge, for the current schema and the one before
migration 2 (LowCardinality on every low-cardinality column, arrays and map keys included).

    python -m pipeline.bench.merge [--rows 60000] [--parts 6] [--repeat 2]

Builds one sink-sized batch of the worker bench's realistic mix (the worker's own EventBatch output, as one Avro
container), then per schema and repeat: inserts it --parts times into a fresh table with merges stopped (so the
parts are exactly the inserts), and merges them into one (OPTIMIZE FINAL). Prints CPU per row of the process
(chDB runs in it) for the inserts and for the merge, and the table's bytes. Every row is merged several times in
its life, which a short end-to-end run does not show. Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.bench.worker import cpu_seconds
from pipeline.config import get_settings


def cpu() -> float:
    return cpu_seconds(os.getpid())  # chDB runs in this process: its threads count


def events_container(rows: int) -> bytes:
    from pipeline.agents.processor import Processor
    from pipeline.agents.rules import RuleSet, load_rules
    from pipeline.agents.state import PartitionState
    from pipeline.bench.worker import build_realistic_records
    from pipeline.sinks.avro_ocf import container

    proc, st = Processor(get_settings(), RuleSet(load_rules())), PartitionState(0, 900)
    values = [proc.process(st, off, r.cluster.encode(), r.value, r.headers).events_value
              for off, r in enumerate(build_realistic_records(rows))]  # fmt: skip
    return container([v for v in values if v])


def schemas() -> dict[str, str]:
    from pipeline.warehouse.migrations import EVENT_COLUMNS, _migrations, event_columns_before_v2

    current = _migrations(0)[0][2][0]
    return {"current": current, "before migration 2": current.replace(EVENT_COLUMNS, event_columns_before_v2(later_columns=True))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=60_000, help="rows per insert (a sink batch at 30k events/s)")
    ap.add_argument("--parts", type=int, default=6, help="inserts, then merged into one part")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    from pipeline.sinks.tables import EventsWriter
    from pipeline.warehouse.client import open_client

    tmp = Path(tempfile.mkdtemp(prefix="kaudit-bench-merge-"))
    try:
        avro = tmp / "batch.avro"
        avro.write_bytes(events_container(args.rows))
        client = open_client(dsn=f"chdb://{tmp / 'chdb'}")
        head = EventsWriter(client, True, tmp)._insert_head.format(
            settings="SETTINGS insert_deduplicate = 0, use_structure_from_insertion_table_in_table_functions = 0 "
        )
        print(f"bench: {args.parts} inserts of {args.rows:,} realistic rows ({avro.stat().st_size / args.rows:.0f} B "
              f"of Avro per row), merged into one part")  # fmt: skip
        for _ in range(args.repeat):
            for name, ddl in schemas().items():
                client.command("DROP TABLE IF EXISTS audit_events")
                client.command(ddl)
                client.command("SYSTEM STOP MERGES audit_events")
                t = cpu()
                for _ in range(args.parts):
                    client.command(f"{head}file('{avro}', 'Avro') ARRAY JOIN `events` AS r")
                insert = cpu() - t
                client.command("SYSTEM START MERGES audit_events")
                t = cpu()
                client.command("OPTIMIZE TABLE audit_events FINAL")
                merge = cpu() - t
                size = client.query("SELECT sum(bytes_on_disk) FROM system.parts "
                                    "WHERE table = 'audit_events' AND active").result_rows[0][0]  # fmt: skip
                n = args.rows * args.parts
                print(f"{name:20s} insert {insert / n * 1e6:5.2f} us/row   merge {merge / n * 1e6:5.2f} us/row   "
                      f"{size / n:5.1f} bytes/row on disk")  # fmt: skip
        client.command("DROP TABLE IF EXISTS audit_events")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
