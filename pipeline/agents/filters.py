"""Noise filter (``KAUDIT_FILTER_FILE``): drop or sample events before they are stored.

Rules and aggregates still see every event (the stats rows count dropped events in ``dropped``), so volume
stays visible and detections keep working. File format:

    filters:
      - name: controller-reads            # for logs and errors
        match: {verb: {in: [get, list, watch]}, username: {startswith: "system:"}}   # pipeline.agents.conditions
        action: drop                      # drop | sample
      - name: kubelet-leases
        match: {objectref_resource: leases}
        action: sample
        keep: 0.01                        # fraction kept, decided by auditID (stable across replays and stages)

The first filter that matches decides; events no filter matches are kept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.agents.conditions import ConditionError, EventView, Predicate, compile_condition


class FilterError(ValueError):
    """A filter file that cannot be used; the message names the file, the filter and the field."""


@dataclass
class Filter:
    name: str
    match: Predicate
    keep: float  # 0 = drop all matching


class NoiseFilter:
    def __init__(self, filters: list[Filter]) -> None:
        self.filters = filters

    def keep(self, view: EventView) -> bool:
        for f in self.filters:
            if f.match(view):
                if f.keep <= 0:
                    return False
                if f.keep >= 1:
                    return True
                h = zlib.crc32(view.ev["auditid"].encode()) % 1_000_000
                return h < f.keep * 1_000_000
        return True


def load_filter(path: Path | str | None) -> NoiseFilter | None:
    if not path:
        return None
    path = Path(path)
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FilterError(f"filter file {path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise FilterError(f"filter file {path}: not valid YAML: {exc}") from None
    if isinstance(doc, list):
        doc = {"filters": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("filters"), list):
        raise FilterError(f"filter file {path}: needs a top-level 'filters:' list")
    out: list[Filter] = []
    for i, raw in enumerate(doc["filters"]):
        name = raw.get("name", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        at = f"filter file {path}, filter '{name}'"
        if not isinstance(raw, dict):
            raise FilterError(f"{at}: needs a mapping with match and action")
        unknown = set(raw) - {"name", "match", "action", "keep"}
        if unknown:
            raise FilterError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}; allowed: name, match, action, keep")
        action = raw.get("action", "drop")
        if action not in ("drop", "sample"):
            raise FilterError(f"{at}: field 'action': use drop or sample, got {action!r}")
        keep = 0.0
        if action == "sample":
            keep = raw.get("keep")
            if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 <= keep <= 1:
                raise FilterError(f"{at}: field 'keep': needs a fraction between 0 and 1, got {keep!r}")
        if "match" not in raw:
            raise FilterError(f"{at}: field 'match' is required")
        try:
            pred = compile_condition(raw["match"], "match")
        except ConditionError as exc:
            raise FilterError(f"{at}: field '{exc.where}': {exc.message}") from None
        out.append(Filter(str(name), pred, float(keep)))
    return NoiseFilter(out)
