"""Printing results: an aligned table for people, JSON lines or CSV for programs."""

from __future__ import annotations

import csv
import json
import sys
from typing import Any, TextIO


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def print_result(result: dict[str, Any], fmt: str = "table", out: TextIO | None = None, max_width: int = 60) -> None:
    out = out or sys.stdout
    cols, rows = result["columns"], result["rows"]
    if fmt == "json":
        for row in rows:
            out.write(json.dumps(dict(zip(cols, row, strict=False)), ensure_ascii=False) + "\n")
        return
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(cols)
        for row in rows:
            w.writerow([_cell(v) for v in row])
        return
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in row] for row in cells]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    out.write("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=False)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''}, {result.get('elapsed_ms', 0)} ms)\n")
