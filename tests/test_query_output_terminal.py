"""Attacker-controlled text (a user agent, an object name, a Forbidden message) printed by the CLI cannot drive
the analyst's terminal: no raw escape sequence, no forged row, no reversed text, whatever the format; JSON stays
valid and equal to the data; CSV cells that a spreadsheet would run are quoted. `kaudit query` and `kaudit rbac
explain` as processes over a real chDB warehouse."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import uuid

from pipeline.query.output import print_result, printable, terminal_text

# clear screen, set the window title, an OSC 8 link, cursor up + erase line, a C1 CSI, a forged newline, RLO
EVIL = "kubectl/v1.37\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://evil.example\x1b\\\x1b[1A\x1b[2K\x9b31m\nforged-row\u202etxt.exe"
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_escapes() -> None:
    assert printable("a\x1bb\nc\u202ed\x7f") == "a\\x1bb\\x0ac\\u202ed\\x7f"
    assert terminal_text("line1 \x1b[2J\nline2\r") == "line1 \\x1b[2J\nline2\\x0d"
    assert printable("Grüße 名前 ✓") == "Grüße 名前 ✓"  # ordinary Unicode is left alone


def test_print_result_every_format() -> None:
    res = {"columns": ["user_agent", "count"], "rows": [[EVIL, 3], ["=HYPERLINK(\"http://x\")", 1]], "elapsed_ms": 1}
    out = io.StringIO()
    print_result(res, "table", out)
    text = out.getvalue()
    assert not RAW_CONTROL.search(text)
    lines = text.splitlines()
    assert len(lines) == 2 + 2 + 1 and "forged-row" not in lines[3]  # header, rule, 2 rows, footer
    out = io.StringIO()
    print_result(res, "json", out)
    assert not RAW_CONTROL.search(out.getvalue())
    assert [json.loads(ln)["user_agent"] for ln in out.getvalue().splitlines()] == [EVIL, res["rows"][1][0]]
    out = io.StringIO()
    print_result(res, "csv", out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[1][0] == EVIL and rows[2][0] == "'=HYPERLINK(\"http://x\")"


def test_cli_query_and_rbac_explain(tmp_path) -> None:
    dsn = f"chdb://{tmp_path / 'chdb'}"
    ev = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": str(uuid.uuid4()),
        "stage": "ResponseComplete", "requestURI": "/api/v1/namespaces/default/configmaps/x", "verb": "get",
        "user": {"username": "mallory", "groups": ["system:authenticated"]}, "sourceIPs": ["10.0.0.9"],
        "userAgent": EVIL, "objectRef": {"resource": "configmaps", "namespace": "default", "name": EVIL,
                                         "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "status": "Failure", "code": 403, "reason": "Forbidden",
                           "message": f'configmaps "{EVIL}" is forbidden: User "mallory" cannot get resource '
                                      '"configmaps" in API group "" in the namespace "default"'},
        "requestReceivedTimestamp": "2026-11-30T10:00:00.000000Z", "stageTimestamp": "2026-11-30T10:00:00.001000Z",
    }  # fmt: skip
    load = (
        "import json, sys; from pipeline.config import Settings; from pipeline.models.normalize import normalize_event; "
        "from pipeline.warehouse.client import open_client; from pipeline.warehouse.migrations import migrate; "
        "from pipeline.web.sampledata import insert_events; "
        f"s = Settings(clickhouse_dsn={dsn!r}); c = open_client(s); migrate(c, s); "
        "e = normalize_event(json.loads(sys.stdin.read()), 'lab'); e['source_id'] = 'test:0'; print(insert_events(c, [e]))"
    )
    done = subprocess.run([sys.executable, "-c", load], input=json.dumps(ev), capture_output=True, text=True)
    assert done.stdout.strip() == "1", done.stderr
    kaudit = [sys.executable, "-m", "pipeline.cli"]
    q = subprocess.run([*kaudit, "query", "--clickhouse", dsn, "--since", "all", "groupby useragent, objectref_name"],
                       capture_output=True, text=True)  # fmt: skip
    assert q.returncode == 0, q.stderr
    assert "\\x1b[2J" in q.stdout and not RAW_CONTROL.search(q.stdout), q.stdout
    for fmt in ("text", "yaml"):
        action = "explain" if fmt == "text" else "suggest"
        r = subprocess.run([*kaudit, "rbac", action, "--user", "mallory", "--since", "all", "--clickhouse", dsn],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "mallory" in r.stdout and not RAW_CONTROL.search(r.stdout), r.stdout
