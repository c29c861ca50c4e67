"""Time ranges of the dashboard: relative, absolute, 'all', minute alignment, bucket sizes, clear errors."""

from __future__ import annotations

import pytest

from pipeline.web.timerange import RangeError, fmt_step, parse_instant_us, parse_range

NOW = 1_700_000_123_456_789  # 2023-11-14T22:15:23.456789Z


def test_relative_ranges_are_minute_aligned_and_cover_now():
    tr = parse_range("15m", None, None, now_us=NOW)
    assert tr.from_us % 60_000_000 == 0 and tr.to_us % 60_000_000 == 0
    assert tr.from_us <= NOW - 15 * 60_000_000 < tr.from_us + 60_000_000
    assert tr.to_us > NOW and tr.step_s == 60
    assert parse_range("24h", None, None, now_us=NOW).step_s == 900
    assert parse_range("7d", None, None, now_us=NOW).step_s == 3 * 3600
    assert parse_range("30d", None, None, now_us=NOW).step_s == 12 * 3600
    assert parse_range(None, None, None, now_us=NOW).label == "last 1h"


def test_absolute_and_all():
    tr = parse_range(None, "2017-09-11T00:00:00Z", "2017-09-12", now_us=NOW)
    assert (tr.from_us, tr.to_us) == (1_505_088_000_000_000, 1_505_174_400_000_000)
    assert parse_instant_us("1505088000") == parse_instant_us("1505088000000") == 1_505_088_000_000_000
    assert parse_instant_us("2017-09-11T02:00:00+02:00") == 1_505_088_000_000_000
    assert parse_range("all", None, None, now_us=NOW).from_us == 0
    assert fmt_step(900) == "15m" and fmt_step(86400) == "1d" and fmt_step(3 * 3600) == "3h"


@pytest.mark.parametrize(
    ("since", "frm", "to", "msg"),
    [
        ("yesterday", None, None, "bad duration"),
        ("5", None, None, "bad duration"),
        (None, "last tuesday", None, "bad time"),
        (None, "2024-01-02", "2024-01-01", "after"),
        (None, "2020-01-01", "2024-01-01", "narrow"),
    ],
)
def test_errors_say_what_is_accepted(since, frm, to, msg):
    with pytest.raises(RangeError, match=msg):
        parse_range(since, frm, to, now_us=NOW)
