"""Printing results: an aligned table for people, JSON lines or CSV for programs."""

from __future__ import annotations

import csv
import json
import re
import sys
from typing import Any, TextIO

# Audit events are attacker-controlled text (user agents, names, messages). Printed raw, an escape sequence in a
# user agent rewrites the analyst's terminal (moves the cursor, erases lines, sets the title, makes links), a
# newline forges a row, and a bidi override shows text reversed. Escaped visibly instead: C0 and C1 controls,
# DEL, and the Unicode bidi embeddings/overrides/isolates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_KEEP_LINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # json.dumps escapes C0


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str) -> str:
    """One cell or line for a terminal: every control character shown as \\xNN (newlines too)."""
    return _UNSAFE.sub(_escape, text)


def terminal_text(text: str) -> str:
    """A whole text for a terminal (explanations, YAML, reports): as ``printable`` but keeping its newlines."""
    return _UNSAFE_KEEP_LINES.sub(_escape, text)


def json_line(obj: Any) -> str:
    """JSON that is still valid and shows no raw control character (C1, DEL, bidi escaped as \\uXXXX)."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(v: Any) -> Any:
    """A CSV cell; text that a spreadsheet would run as a formula (a user agent "=HYPERLINK(...)" is anyone's
    to send) gets a leading quote, lists and maps are JSON."""
    if v is None:
        return ""
    if isinstance(v, bool | int | float):
        return v
    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    return "'" + text if text.startswith(FORMULA_START) else text


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list | dict):
        return printable(json.dumps(v, ensure_ascii=False))
    if isinstance(v, float):
        return f"{v:.6g}"
    return printable(str(v))


def print_result(result: dict[str, Any], fmt: str = "table", out: TextIO | None = None, max_width: int = 60) -> None:
    out = out or sys.stdout
    cols, rows = result["columns"], result["rows"]
    if fmt == "json":
        for row in rows:
            out.write(json_line(dict(zip(cols, row, strict=False))) + "\n")
        return
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(cols)
        for row in rows:
            w.writerow([csv_cell(v) for v in row])
        return
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    out.write("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''}, {result.get('elapsed_ms', 0)} ms)\n")
