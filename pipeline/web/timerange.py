"""Time ranges of the dashboard (``since=15m`` .. ``30d``, ``all``, or absolute ``from``/``to``) and the
bucket size of its time series. Ranges are aligned to whole minutes so that the per-minute rollup
(``events_1m``) and the raw events table count exactly the same events."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.models.timestamps import clamp_us

MINUTE_US = 60_000_000
SINCE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# bucket sizes in seconds; the smallest giving at most MAX_BUCKETS points is used
STEPS = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 120
MAX_SPAN_S = 400 * 86400  # absolute ranges longer than this are refused (keeps queries bounded)


class RangeError(ValueError):
    """The time range in the request is not understood; the message says what is accepted."""


@dataclass(frozen=True)
class TimeRange:
    from_us: int  # inclusive, minute aligned
    to_us: int  # exclusive, minute aligned
    label: str

    @property
    def step_s(self) -> int:
        span = max(60, (self.to_us - self.from_us) // 1_000_000)
        for step in STEPS:
            if span / step <= MAX_BUCKETS:
                return step
        return STEPS[-1]

    def params(self) -> dict[str, int]:
        return {"t0": self.from_us, "t1": self.to_us}


def parse_duration_s(text: str) -> int:
    m = SINCE_RE.match(text or "")
    if not m:
        raise RangeError(
            f"bad duration {text!r}: use a number and a unit s, m, h, d or w (e.g. 15m, 24h, 7d)"
        )
    return int(m.group(1)) * UNIT_S[m.group(2)]


def parse_instant_us(text: str) -> int:
    """ISO 8601 (``2024-05-01T10:00:00Z``, date only, no zone = UTC) or epoch seconds / milliseconds."""
    t = (text or "").strip()
    if not t:
        raise RangeError("empty time")
    if re.fullmatch(r"\d{9,16}(\.\d+)?", t):
        v = float(t)
        return int(v * 1000) if v > 1e11 else int(v * 1_000_000)  # ms if it looks like ms
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise RangeError(
            f"bad time {text!r}: use ISO 8601 like 2024-05-01T10:00:00Z or epoch seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def _floor(us: int) -> int:
    return us - us % MINUTE_US


def _ceil(us: int) -> int:
    return _floor(us + MINUTE_US - 1)


def parse_range(since: str | None, from_: str | None, to: str | None, now_us: int | None = None) -> TimeRange:
    """``from``/``to`` win over ``since``; ``since=all`` covers everything stored (from 1970 to now + 1 day)."""
    now = now_us if now_us is not None else int(time.time() * 1_000_000)
    if from_:
        start = clamp_us(parse_instant_us(from_))
        end = clamp_us(parse_instant_us(to)) if to else now
        if end <= start:
            raise RangeError("'to' must be after 'from'")
        if end - start > MAX_SPAN_S * 1_000_000:
            raise RangeError(f"range longer than {MAX_SPAN_S // 86400} days; narrow it")
        return TimeRange(_floor(start), _ceil(end), f"{from_} .. {to or 'now'}")
    since = (since or "1h").strip()
    if since == "all":
        return TimeRange(0, _ceil(now + 86400 * 1_000_000), "all")
    return TimeRange(_floor(clamp_us(now - parse_duration_s(since) * 1_000_000)), _ceil(now + 1), f"last {since}")


def fmt_step(step_s: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if step_s % size == 0:
            return f"{step_s // size}{unit}"
    return f"{step_s}s"
