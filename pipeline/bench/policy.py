"""`kaudit policy suggest` against a real kube-apiserver at a larger size: controller-like background traffic
under the shipped policy, the suggestion, the API server restarted with it, the same scenario again; prints the
estimate against the measured reduction of events and bytes, and the alert rules that fired before and after.

    python -m pipeline.bench.policy --controllers 10 --rounds 60     # make bench-policy (Kafka on the default port)

It drives the same live pipeline as the tests (tests/kube.py: bridge over TLS, worker, sink into a fresh chDB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pipeline.config import REPO_ROOT, Settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controllers", type=int, default=10, help="controller ServiceAccounts (default 10)")
    ap.add_argument("--rounds", type=int, default=60, help="rounds of each controller's loop (default 60)")
    ap.add_argument("--kafka", default=None, help="Kafka bootstrap (default KAUDIT_KAFKA_BOOTSTRAP)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from pipeline.kafka.topics import ensure_topics
    from pipeline.policy import summary
    from tests.kube import live_pipeline
    from tests.test_policy_kube import run_policy_cycle

    with tempfile.TemporaryDirectory(prefix="kaudit-bench-policy-") as tmp:
        tmp_path = Path(tmp)
        base = Settings()
        s = Settings(kafka_bootstrap=args.kafka or base.kafka_bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}-",
                     var=tmp_path / "var", clickhouse_dsn=f"chdb://{tmp_path / 'chdb'}")  # fmt: skip
        ensure_topics(s)
        t = time.monotonic()
        with live_pipeline(s, tmp_path) as lp:
            out = run_policy_cycle(lp, tmp_path, rounds=args.rounds, controllers=args.controllers)
        sug, before, after = out["sug"], out["before"], out["after"]
        print(summary(sug))
        print(f"scenario: {args.controllers} controllers x {args.rounds} rounds; before: {before['events']:,} events, "
              f"{before['bytes']:,} bytes; after: {after['events']:,} events, {after['bytes']:,} bytes")  # fmt: skip
        (ee, eb), (me, mb) = out["estimate"], out["measured"]
        print(f"events: estimated -{100 * ee:.1f}%, measured -{100 * me:.1f}% (difference {100 * (me - ee):+.1f} points)")
        print(f"bytes:  estimated -{100 * eb:.1f}%, measured -{100 * mb:.1f}% (difference {100 * (mb - eb):+.1f} points)")
        lost = sorted(set(before["rules"]) - set(after["rules"]))
        print(f"alert rules before: {', '.join(before['rules'])}")
        print(f"alert rules after:  {', '.join(after['rules'])}" + (f"  MISSING: {', '.join(lost)}" if lost else ""))
        print(f"total {time.monotonic() - t:.0f} s")
        return 1 if lost or abs(me - ee) > 0.10 else 0


if __name__ == "__main__":
    sys.exit(main())
