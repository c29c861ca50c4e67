"""What the warehouse costs chDB per event to insert and to merge, for the schema the migrations make today.

    python -m pipeline.bench.merge [--rows 45000] [--parts 6] [--repeat 2]

Builds one sink-sized batch of the worker bench's realistic mix (the worker's own EventBatch output, as one Avro
container; 45,000 events is what a sink batch holds at 30k events/s offered), then per repeat: migrates a fresh
database, stops merges, inserts the batch --parts times through the sink's own writer (so its materialized views
run too, and the parts are exactly the inserts), then merges every table into one part (OPTIMIZE FINAL).
Prints CPU per event of the process (chDB runs in it) for the inserts and for the merge of each table, and the
bytes on disk. Every row is merged several times in its life (about once per merge level), which a short
end-to-end run does not show. Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.bench.worker import cpu_seconds, machine_speed
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


TABLES_WITH_PARTS = "SELECT table, count(), sum(rows), sum(bytes_on_disk) FROM system.parts WHERE active AND database = currentDatabase() GROUP BY table ORDER BY table"  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=45_000, help="events per insert (a sink batch at 30k events/s)")
    ap.add_argument("--parts", type=int, default=6, help="inserts, then merged into one part per table")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--table-setting", action="append", default=[], metavar="NAME=VALUE",
                    help="MergeTree setting applied to audit_events after migrating (compare with and without)")
    ap.add_argument("--alter", action="append", default=[], metavar="SQL",
                    help="statement run after migrating, e.g. 'ALTER TABLE audit_events DROP INDEX idx_source'")
    args = ap.parse_args()
    from pipeline.sinks.tables import EventsWriter
    from pipeline.warehouse.client import open_client
    from pipeline.warehouse.migrations import migrate

    tmp = Path(tempfile.mkdtemp(prefix="kaudit-bench-merge-"))
    try:
        container = events_container(args.rows)
        client = open_client(dsn=f"chdb://{tmp / 'chdb'}")
        print(f"bench: {args.parts} inserts of {args.rows:,} realistic events ({len(container) / args.rows:.0f} B of "
              f"Avro per event), then every table merged into one part; {machine_speed()}")  # fmt: skip
        n = args.rows * args.parts
        for rep in range(args.repeat):
            db = f"bench_merge_{rep}"
            client.command(f"DROP DATABASE IF EXISTS {db}")
            client.command(f"CREATE DATABASE {db}")
            client.command(f"USE {db}")
            client.database = db
            migrate(client)
            for kv in args.table_setting:
                client.command(f"ALTER TABLE audit_events MODIFY SETTING {kv}")
            for sql in args.alter:
                client.command(sql)
            client.command("SYSTEM STOP MERGES")
            writer = EventsWriter(client, True, tmp, read_threads=1)
            t = cpu()
            for i in range(args.parts):
                writer.insert_container(container, f"bench-{rep}-{i}")
            insert = cpu() - t
            client.command("SYSTEM START MERGES")
            merged = []
            for table, parts, _, _ in client.query(TABLES_WITH_PARTS).result_rows:
                if parts > 1:
                    t = cpu()
                    client.command(f"OPTIMIZE TABLE {table} FINAL")
                    merged.append((table, cpu() - t))
            size = sum(r[3] for r in client.query(TABLES_WITH_PARTS).result_rows)
            total_merge = sum(c for _, c in merged)
            print(f"insert {insert / n * 1e6:5.2f} us/event   merge into one part {total_merge / n * 1e6:5.2f} us/event ("
                  + ", ".join(f"{t} {c / n * 1e6:.2f}" for t, c in merged)
                  + f")   {size / n:5.1f} bytes/event on disk")  # fmt: skip
            client.command(f"DROP DATABASE {db}")
            client.command("USE default")
            client.database = "default"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
