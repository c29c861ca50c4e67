"""Kubernetes MicroTime/Time parsing to integer microseconds, cached per second for speed."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


class TimestampError(ValueError):
    pass


# What a DateTime64(6) column holds (1900-01-01 .. 2299-12-31): a time bound of a read outside it (since=999999999d,
# an epoch of 16 digits) is clamped here instead of overflowing a 64-bit query parameter (a 500).
MIN_US = -2_208_988_800 * 1_000_000
MAX_US = 10_413_792_000 * 1_000_000 - 1


def clamp_us(us: int) -> int:
    return min(max(us, MIN_US), MAX_US)


@lru_cache(maxsize=65536)
def _seconds(prefix: str) -> int:
    # prefix is "YYYY-MM-DDTHH:MM:SS"
    return int(datetime.fromisoformat(prefix).replace(tzinfo=UTC).timestamp())


def parse_ts_us(value: str) -> int:
    """Parse RFC 3339 ('2023-01-27T18:28:08.129781Z', '2017-09-11T19:55:05Z', offsets) to µs since epoch."""
    if not isinstance(value, str) or len(value) < 19:
        raise TimestampError(f"not a timestamp: {value!r}")
    if value[10] in "Tt " and (value.endswith("Z") or value.endswith("z")):
        try:
            secs = _seconds(value[:19])
        except ValueError as exc:
            raise TimestampError(f"not a timestamp: {value!r}") from exc
        frac = value[19:-1]
        if not frac:
            return secs * 1_000_000
        if frac[0] == "." and frac[1:].isdigit():
            digits = (frac[1:] + "000000")[:6]
            return secs * 1_000_000 + int(digits)
    try:
        text = value.replace("z", "Z").replace("Z", "+00:00")
        # fromisoformat in 3.11 accepts at most 6 fractional digits
        if "." in text:
            head, _, tail = text.partition(".")
            digits = "".join(ch for ch in tail if ch.isdigit())
            rest = tail[len(digits) :]
            text = f"{head}.{(digits + '000000')[:6]}{rest}"
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimestampError(f"not a timestamp: {value!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def format_ts_us(us: int) -> str:
    """µs since epoch -> '2023-01-27T18:28:08.129781Z' (the MicroTime format)."""
    secs, micros = divmod(us, 1_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{micros:06d}Z"
