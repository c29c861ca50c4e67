"""The log-file shipper against the real Kafka broker: rotation both ways, restart mid-file, partial lines,
--once on gzip, invalid lines to the dead-letter topic. Every test checks the raw topic holds exactly the bytes
written, in order, once."""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from pipeline import config
from pipeline.config import Settings
from pipeline.ingest import oversize
from pipeline.ingest.shipper import CheckpointStore, Shipper
from pipeline.ingest.testing import read_topic
from pipeline.redaction import hash_value
from pipeline.redaction.events import WITHHELD
from tests.conftest import SAMPLES

pytestmark = pytest.mark.kafka


def line(i: int, tag: str = "a") -> bytes:
    ev = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": f"{tag}-{i:06d}",
        "stage": "ResponseComplete", "requestURI": "/api/v1/pods", "verb": "list", "user": {"username": "bob"},
        "requestReceivedTimestamp": "2026-01-01T00:00:00.000001Z", "stageTimestamp": "2026-01-01T00:00:00.000002Z",
    }  # fmt: skip
    return orjson.dumps(ev) + b"\n"


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)
        f.flush()


def raw_bytes(settings: Settings, n_bytes: int, timeout: float = 30.0) -> bytes:
    """Concatenated raw values (one cluster = one partition = in order) once ``n_bytes`` arrived."""
    deadline = time.monotonic() + timeout
    while True:
        recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW))
        data = b"".join(r.value for r in sorted(recs, key=lambda r: (r.partition, r.offset)))
        if len(data) >= n_bytes or time.monotonic() > deadline:
            return data
        time.sleep(0.3)


@contextmanager
def following(settings: Settings, paths: list[Path], cluster: str = "files") -> Iterator[Shipper]:
    sh = Shipper(settings, cluster, [str(p) for p in paths], poll_interval=0.05)
    err: list[BaseException] = []

    def go() -> None:
        try:
            sh.run()
        except BaseException as exc:  # noqa: BLE001
            err.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    try:
        yield sh
    finally:
        sh.stop_event.set()
        t.join(30)
        assert not err, err


def wait_acked(sh: Shipper, path: Path, offset: int, timeout: float = 30.0) -> None:
    """Until the checkpoint of ``path`` reached ``offset`` (i.e. Kafka acknowledged everything before it)."""
    store = CheckpointStore(sh.s.var, sh.cluster)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp = store.load(str(path))
        st = os.stat(path)
        if cp is not None and cp.offset >= offset and (cp.dev, cp.ino) == (st.st_dev, st.st_ino):
            return
        time.sleep(0.05)
    raise AssertionError(f"checkpoint of {path} never reached {offset}: {store.load(str(path))}")


def test_follow_rename_rotation_and_partial_line(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    first = b"".join(line(i) for i in range(300))
    append(log, first)
    with following(settings, [log]) as sh:
        wait_acked(sh, log, len(first))
        # a line written in two parts is shipped only once complete
        half = line(300)
        append(log, half[:40])
        time.sleep(0.5)
        assert sh.stats.lines == 300
        append(log, half[40:] + line(301))
        # rename + create (lumberjack): the last lines written to the old file are still shipped
        append(log, line(302))
        os.rename(log, tmp_path / "audit-2026-01-01T00-00-00.000.log")
        append(log, line(303) + line(304))
        new = line(303) + line(304)
        wait_acked(sh, log, len(new))
    want = first + half + line(301) + line(302) + new
    assert raw_bytes(settings, len(want)) == want
    recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW))
    assert all(r.key == b"files" and r.headers["kaudit-source"] == "file" for r in recs)
    assert all(r.headers["kaudit-format"] == "jsonlines" for r in recs)
    assert {r.headers["kaudit-file"] for r in recs} <= {str(log), str(tmp_path / "audit-2026-01-01T00-00-00.000.log")}
    assert recs[-1].headers["kaudit-file"] == str(log)
    assert recs[0].headers["kaudit-first-line"] == "1"


def test_follow_copytruncate(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    a = b"".join(line(i, "a") for i in range(50))
    append(log, a)
    with following(settings, [log]) as sh:
        wait_acked(sh, log, len(a))
        (tmp_path / "audit.log.1").write_bytes(log.read_bytes())  # copy ...
        with open(log, "r+b") as f:  # ... truncate
            f.truncate(0)
        time.sleep(0.3)
        b = b"".join(line(i, "b") for i in range(10))
        append(log, b)
        wait_acked(sh, log, len(b))
    assert raw_bytes(settings, len(a) + len(b)) == a + b


def test_restart_mid_file_resumes_without_loss_or_duplicates(settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    a = b"".join(line(i) for i in range(7000))  # more than one 5000-line / 1 MiB record
    append(log, a)
    with following(settings, [log]) as sh:
        wait_acked(sh, log, len(a))
    b = b"".join(line(i, "b") for i in range(100))
    append(log, b)
    with following(settings, [log]) as sh:
        wait_acked(sh, log, len(a) + len(b))
        assert sh.stats.lines == 100  # only the new lines were read again
    # stopped again; the file is rotated while the shipper is down: the old file is finished first
    c = b"".join(line(i, "c") for i in range(20))
    append(log, c)
    os.rename(log, tmp_path / "audit.log.1")
    d = line(0, "d")
    append(log, d)
    with following(settings, [log]) as sh:
        wait_acked(sh, log, len(d))
    want = a + b + c + d
    assert raw_bytes(settings, len(want)) == want
    recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW))
    assert all(len(r.value) <= 1024 * 1024 and r.value.count(b"\n") <= 5000 for r in recs)
    first_lines = [int(r.headers["kaudit-first-line"]) for r in recs if r.headers["kaudit-file"] == str(log) and
                   r.value.startswith(b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"b-000000"')]  # fmt: skip
    assert first_lines == [7001]


def test_once_gzip_pretty_printed_and_invalid_lines(settings: Settings, tmp_path: Path) -> None:
    lines = [line(i) for i in range(20)]
    lines[5] = b"this is not json\n"
    lines[9] = b'{"kind": "Event", "stage": "ResponseComplete"}\n'  # no auditID
    body = b"".join(lines) + line(20)[:-1]  # last line without a newline
    gz = tmp_path / "audit-2025.log.gz"
    gz.write_bytes(gzip.compress(body))
    pretty = SAMPLES / "openshift" / "raw_audit_kubernetes.json"  # one event over many lines
    sh = Shipper(settings, "backfill", [str(gz), str(pretty)], once=True)
    stats = sh.run()
    assert stats.deadletter == 2
    recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW))
    by_file: dict[str, bytes] = {}
    for r in sorted(recs, key=lambda r: r.offset):
        by_file[r.headers["kaudit-file"]] = by_file.get(r.headers["kaudit-file"], b"") + r.value
    good = b"".join(x for i, x in enumerate(lines) if i not in (5, 9)) + line(20)[:-1]
    assert by_file[str(gz)] == good
    assert by_file[str(pretty)] == pretty.read_bytes()
    first = sorted(int(r.headers["kaudit-first-line"]) for r in recs if r.headers["kaudit-file"] == str(gz))
    assert first == [1, 7, 11]
    dead = read_topic(settings.kafka_bootstrap, settings.topic(config.DEADLETTER))
    assert sorted(orjson.loads(d.value)["origin"] for d in dead) == [f"{gz}:10", f"{gz}:6"]
    # the line that is not JSON is withheld (it may hold a credential): the origin names the file and line
    withheld = WITHHELD.format(n=len(lines[5]), h=hash_value(lines[5].decode()))
    assert {orjson.loads(d.value)["data"] for d in dead} == {withheld, lines[9].decode()}
    # run again: checkpoints say everything is done
    again = Shipper(settings, "backfill", [str(gz), str(pretty)], once=True).run()
    assert (again.lines, again.records) == (0, 0)


def test_a_line_too_large_for_kafka_is_stored_without_its_objects(settings: Settings, tmp_path: Path) -> None:
    """A line larger than any record (a list response at RequestResponse): its event is stored the way the API
    server's truncate backend writes it, the original goes to the dead-letter topic, the lines around it as they
    are. Before, the event was only dead-lettered: no row, no alert."""
    s = settings.model_copy(update={"max_message_bytes": 1024 * 1024 + 64 * 1024})  # records of 1 MiB
    big = orjson.loads(line(1))
    big.update(level="RequestResponse", responseObject={"kind": "SecretList", "items": [{"data": {"k": "x" * 1_200_000}}]})
    big_line = orjson.dumps(big) + b"\n"
    log = tmp_path / "audit.log"
    log.write_bytes(line(0) + big_line + line(2))
    stats = Shipper(s, "big", [str(log)], once=True).run()
    assert stats.deadletter == 1
    recs = sorted(read_topic(s.kafka_bootstrap, s.topic(config.RAW)), key=lambda r: r.offset)
    data = b"".join(r.value for r in recs)
    cut = {k: v for k, v in big.items() if k != "responseObject"}
    cut["annotations"] = {"audit.k8s.io/truncated": "true", "kaudit.io/original-bytes": str(len(big_line))}
    assert data == line(0) + orjson.dumps(cut) + b"\n" + line(2)
    dead = read_topic(s.kafka_bootstrap, s.topic(config.DEADLETTER))
    assert [orjson.loads(d.value)["origin"] for d in dead] == [f"{log}:2"]
    assert orjson.loads(dead[0].value)["reason"].startswith(oversize.REASON_TRUNCATED)


def test_records_fit_a_one_mib_kafka(settings: Settings, tmp_path: Path) -> None:
    """With KAUDIT_MAX_MESSAGE_BYTES at a managed Kafka's 1 MiB, records of lines stay under it (they were cut at
    1 MiB of lines, which with headers Kafka refused, and the shipper then waited for an ack that never came)."""
    s = settings.model_copy(update={"max_message_bytes": 1024 * 1024})
    lines = [line(i) for i in range(12_000)]  # ~3.5 MB
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(lines))
    stats = Shipper(s, "mib", [str(log)], once=True).run()
    recs = sorted(read_topic(s.kafka_bootstrap, s.topic(config.RAW)), key=lambda r: r.offset)
    assert stats.deadletter == 0 and len(recs) >= 4 and all(len(r.value) <= 1024 * 1024 - 64 * 1024 for r in recs)
    assert b"".join(r.value for r in recs) == b"".join(lines)


def test_what_a_crash_leaves_in_a_log_file_costs_only_the_event_it_cut(settings: Settings, tmp_path: Path) -> None:
    """A node crash leaves NUL bytes in a log file (blocks allocated, never written); the restarted API server
    appends after them, on the same line (or right after an event the crash cut, without padding). Before, that
    line (its good event included) was one invalid-JSON dead letter, withheld; now the pieces between NUL runs, and
    an event starting after a cut one, are read on their own."""
    cut = line(2)[:40]  # the event the crash cut
    data = line(0) + line(1)[:-1] + b"\0" * 4096 + line(3) + cut + b"\0" * 100 + line(4) + b"\0\0\n" + line(5)
    data += line(6)[:50] + line(7)  # cut without padding: the next event starts on the same line
    log = tmp_path / "audit.log"
    log.write_bytes(data)
    stats = Shipper(settings, "nul", [str(log)], once=True).run()
    assert (stats.deadletter, stats.nul_lines) == (2, 3)
    recs = sorted(read_topic(settings.kafka_bootstrap, settings.topic(config.RAW)), key=lambda r: r.offset)
    assert b"".join(r.value for r in recs) == line(0) + line(1) + line(3) + line(4) + b"\n" + line(5) + line(7)
    dead = read_topic(settings.kafka_bootstrap, settings.topic(config.DEADLETTER))
    assert sorted(orjson.loads(d.value)["origin"] for d in dead) == [f"{log}:3", f"{log}:6"]


def test_an_eventlist_line_is_taken_item_by_item_when_it_must_be(settings: Settings, tmp_path: Path) -> None:
    """A file of EventList documents (webhook bodies saved to disk): one with a bad item, or one larger than a
    record, used to be one dead letter for every event in it. Now, as the bridge does, each item goes on its own:
    good ones stored as lines of their exact bytes, the bad one dead-lettered; a list that is fine stays whole."""
    s = settings.model_copy(update={"max_message_bytes": 1024 * 1024})
    def eventlist(*items: bytes) -> bytes:
        return b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[' + b",".join(items) + b"]}\n"
    ev = [line(i)[:-1] for i in range(3000)]
    bad = b'{"kind":"Event","stage":"ResponseComplete"}'  # no auditID
    fine, with_bad = eventlist(ev[0], ev[1]), eventlist(ev[2], bad, ev[3])
    big = eventlist(*ev[4:], *(line(i, "b")[:-1] for i in range(1000)))  # about 1.2 MB: over 1 MiB
    log = tmp_path / "audit.log"
    log.write_bytes(fine + with_bad + big)
    stats = Shipper(s, "lists", [str(log)], once=True).run()
    assert stats.deadletter == 1
    recs = sorted(read_topic(s.kafka_bootstrap, s.topic(config.RAW)), key=lambda r: r.offset)
    assert all(len(r.value) <= 1024 * 1024 - 64 * 1024 for r in recs)
    want = fine + ev[2] + b"\n" + ev[3] + b"\n" + b"".join(e + b"\n" for e in ev[4:]) + b"".join(line(i, "b") for i in range(1000))
    assert b"".join(r.value for r in recs) == want
    dead = read_topic(s.kafka_bootstrap, s.topic(config.DEADLETTER))
    assert [(orjson.loads(d.value)["origin"], orjson.loads(d.value)["data"]) for d in dead] == [(f"{log}:2", bad.decode() + "\n")]


def test_killed_mid_import_resends_at_most_the_unacknowledged_tail(settings: Settings, tmp_path: Path) -> None:
    """kill -9 while importing; the rerun resumes from the checkpoint: every line arrives, duplicates are whole
    records with the same batch id and the same bytes."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    log = tmp_path / "big.log"
    data = b"".join(line(i, "k") for i in range(60000))  # ~19 MiB, ~20 records
    log.write_bytes(data)
    env = {**os.environ, "KAUDIT_TOPIC_PREFIX": settings.topic_prefix, "KAUDIT_VAR": str(settings.var),
           "KAUDIT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}  # fmt: skip
    cmd = [sys.executable, "-m", "pipeline.cli", "ship", "--once", "--cluster", "big", str(log)]
    store = CheckpointStore(settings.var, "big")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        cp = store.load(str(log))
        if cp is not None and cp.offset > 0:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(30)
    killed_at = store.load(str(log))
    assert subprocess.run(cmd, env=env, cwd=REPO, capture_output=True).returncode == 0
    assert store.load(str(log)).offset == len(data)
    recs = read_topic(settings.kafka_bootstrap, settings.topic(config.RAW))
    by_id: dict[str, bytes] = {}
    for r in recs:
        assert by_id.setdefault(r.headers["kaudit-batch-id"], r.value) == r.value
    starts = sorted((int(r.headers["kaudit-first-line"]), v) for v, r in {r.value: r for r in recs}.items())
    assert b"".join(v for _, v in starts) == data
    assert killed_at is not None and 0 < killed_at.offset <= len(data)
