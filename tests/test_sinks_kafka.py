"""The sink as a real process with the real Kafka broker and chDB: samples end to end through the query API and
the CLI, SIGKILL mid-batch then restart, duplicate worker outputs, and a chDB path held by another process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.kafka.producer import make_producer
from pipeline.query.execute import ExecError
from pipeline.query.execute import run as execute
from pipeline.sinks.fixtures import chunks, produce_source, sample_sources
from tests.conftest import REPO, SAMPLES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sink_env(s: Settings, port: int) -> dict[str, str]:
    return {**os.environ, "KAUDIT_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "KAUDIT_TOPIC_PREFIX": s.topic_prefix,
            "KAUDIT_CLICKHOUSE_DSN": s.clickhouse_dsn, "KAUDIT_VAR": str(s.var), "KAUDIT_API_PORT": str(port),
            "KAUDIT_API_URL": ""}  # fmt: skip


def start_sink(s: Settings, port: int, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "sink",
        "--group",
        f"{s.topic_prefix}sink",
        "--max-seconds",
        "0.3",
        *extra,
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=sink_env(s, port), stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


def api(port: int) -> Settings:
    return Settings(api_url=f"http://127.0.0.1:{port}")


def sql(port: int, text: str) -> list[list]:
    return execute(api(port), sql=text)["rows"]


def wait_count(port: int, want: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            n = sql(port, "SELECT count() FROM audit_events")[0][0]
            if n >= want:
                time.sleep(1.0)  # anything extra (a duplicate) would show up now
                return sql(port, "SELECT count() FROM audit_events")[0][0]
        except ExecError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"only {n} of {want} rows after {timeout}s\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def produce_samples(s: Settings, copies: int = 1, size: int = 100, dup_first: int = 0) -> int:
    """Every sample event as worker outputs; copy k gets auditIDs suffixed with k. Returns the event count."""
    p = make_producer(s)
    sources = [(c, evs) for c, evs in sample_sources(SAMPLES)]
    offset, total, produced = 0, 0, []
    for k in range(copies):
        for cluster, events in sources:
            for ch in chunks(events, size):
                if k:
                    ch = [{**e, "auditid": f"{e['auditid']}-{k}"} for e in ch]
                part = offset % 4
                produce_source(p, s, part, f"{part}:{offset}", cluster, ch)
                produced.append((part, f"{part}:{offset}", cluster, ch))
                offset += 1
                total += len(ch)
    for part, sid, cluster, ch in produced[:dup_first]:  # the worker re-emitting after its own crash
        produce_source(p, s, part, sid, cluster, ch)
    assert p.flush(60) == 0
    return total


def test_samples_end_to_end_through_api_and_cli(settings, tmp_path):
    total = produce_samples(settings, dup_first=5)
    assert total == 1001
    port, log = free_port(), tmp_path / "sink.log"
    proc = start_sink(settings, port, log)
    try:
        assert wait_count(port, total, proc, log) == total
        assert execute(api(port), sql="SELECT 1")["rows"] == [[1]]
        # aggregates equal GROUP BY over the events
        assert sql(port, "SELECT sum(count) FROM verb_stats") == [[total]]
        by_verb = sql(port, "SELECT verb, count() FROM audit_events GROUP BY verb ORDER BY verb")
        assert sql(port, "SELECT verb, sum(count) FROM verb_stats GROUP BY verb ORDER BY verb") == by_verb
        by_code = sql(port, "SELECT responsestatus_code, count() FROM audit_events GROUP BY 1 ORDER BY 1")
        assert sql(port, "SELECT code, sum(count) FROM status_stats GROUP BY 1 ORDER BY 1") == by_code
        # the CLI finds the path locked by the sink and goes through its API
        env = {**sink_env(settings, port), "KAUDIT_API_URL": ""}
        out = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "query", "--format", "json",
             'logtype="Kubernetes Audit Logs" and responsestatus_code=403 and verb="list" groupby username'],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        events = [e for _c, evs in sample_sources(SAMPLES) for e in evs]
        want = {}
        for e in events:
            if e["responsestatus_code"] == 403 and e["verb"] == "list":
                want[e["username"]] = want.get(e["username"], 0) + 1
        assert {r["username"]: r["count"] for r in rows} == want
        refused = subprocess.run([sys.executable, "-m", "pipeline.cli", "sql", "DROP TABLE audit_events"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert refused.returncode == 2 and "refused" in refused.stderr
        with pytest.raises(ExecError, match="refused"):
            execute(api(port), sql="INSERT INTO audit_events (cluster) VALUES ('x')")
        with pytest.raises(ExecError, match="refused: a SETTINGS clause|READONLY|readonly"):
            execute(api(port), sql="SELECT * FROM audit_events SETTINGS max_threads=1, readonly=0")
        err = subprocess.run([sys.executable, "-m", "pipeline.cli", "query", 'usrname="x"'],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert err.returncode == 2 and 'did you mean "username"' in err.stderr
        assert sql(port, "SELECT count() FROM audit_events") == [[total]]
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_loses_nothing_and_duplicates_nothing(settings, tmp_path):
    """Killed twice while batches are in flight (each insert split into files that chDB decodes in parallel, events
    and stats alike), then left to finish: every row stored exactly once, aggregates exact."""
    total = produce_samples(settings, copies=12, dup_first=40)
    port, log = free_port(), tmp_path / "sink.log"
    kills = []
    for below in (total // 2, total):  # the second kill lands after a restart, in the second half
        proc = start_sink(settings, port, log, "--max-rows", "1500")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                n = sql(port, "SELECT count() FROM audit_events")[0][0]
            except ExecError:
                n = 0
            if (kills[-1] if kills else 0) < n < below:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills.append(n)
                break
            time.sleep(0.05)
        assert len(kills) == (1 if below < total else 2), (
            f"the sink finished before it could be killed: {kills}"
        )
    killed_at = kills[-1]
    proc = start_sink(settings, port, log, "--max-rows", "1500")
    try:
        assert wait_count(port, total, proc, log) == total
        dups = sql(port, "SELECT count() FROM (SELECT cluster, auditid, stage, source_id, count() AS c "
                         "FROM audit_events GROUP BY ALL HAVING c > 1)")  # fmt: skip
        assert dups == [[0]]
        assert sql(port, "SELECT sum(count) FROM verb_stats") == [[total]]
        assert sql(port, "SELECT sum(count) FROM status_stats") == [[total]]
        assert sql(port, "SELECT sum(events) FROM events_1m") == [[total]]
    finally:
        assert stop(proc) == 0
    assert killed_at < total


def test_locked_chdb_path_makes_the_sink_wait_and_retry(settings, tmp_path):
    total = produce_samples(settings)
    path = settings.clickhouse_dsn[len("chdb://") :]
    flag, release = tmp_path / "holding", tmp_path / "release"
    # holds the path until the test has seen the sink retry (at most 120 s): no race with a slow sink start
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib; from pipeline.warehouse.client import open_client; "
         f"c = open_client(dsn='chdb://{path}'); pathlib.Path(sys.argv[1]).touch(); r = pathlib.Path(sys.argv[2])\n"
         "for _ in range(1200):\n    if r.exists(): break\n    time.sleep(0.1)", str(flag), str(release)],
        cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.1)
    port, log = free_port(), tmp_path / "sink.log"
    proc = start_sink(settings, port, log)
    try:
        deadline = time.monotonic() + 60
        while "retrying" not in log.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert "retrying" in log.read_text()
        release.touch()
        assert holder.wait(timeout=60) == 0
        assert wait_count(port, total, proc, log) == total
    finally:
        holder.kill()
        assert stop(proc) == 0
