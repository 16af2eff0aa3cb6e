from __future__ import annotations

from datetime import date

import pytest

from grader.clock import (
    TimestampError,
    format_instant,
    local_day,
    local_month,
    month_label,
    month_start,
    parse_instant,
)

SH = "Asia/Shanghai"


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-03-01T09:30:00+08:00", "2026-03-01T01:30:00Z"),
        ("2026-03-01T09:30:00Z", "2026-03-01T09:30:00Z"),
        ("2026-03-01t09:30:00z", "2026-03-01T09:30:00Z"),
        ("2026-03-01T09:30:00.5-05:30", "2026-03-01T15:00:00.5Z"),
        ("2026-03-01T09:30:00.123456789+00:00", "2026-03-01T09:30:00.123456Z"),
        ("2016-12-31T23:59:60Z", "2016-12-31T23:59:59.999999Z"),
    ],
)
def test_parses_rfc3339(text: str, utc: str) -> None:
    assert format_instant(parse_instant(text)) == utc


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T09:30:00",
        "2026-03-01 09:30:00+08:00",
        "2026-02-30T00:00:00Z",
        "2026-03-01T25:00:00Z",
        "2026-03-01",
        "1772328600",
        "2026-03-01T09:30:00+8:00",
        "2026-03-01T09:30:00+24:00",
    ],
)
def test_rejects_non_rfc3339(text: str) -> None:
    with pytest.raises(TimestampError):
        parse_instant(text)


def test_rejects_non_string() -> None:
    with pytest.raises(TimestampError):
        parse_instant(1772328600)


def test_local_date_uses_the_policy_timezone() -> None:
    # 2026-02-28T20:00Z is already 1 March in Shanghai.
    us = parse_instant("2026-02-28T20:00:00Z")
    assert date.fromordinal(local_day(us, SH)) == date(2026, 3, 1)
    assert date.fromordinal(local_day(us, "UTC")) == date(2026, 2, 28)
    assert month_label(local_month(us, SH)) == "2026-03"


def test_month_start_is_local_midnight() -> None:
    month = local_month(parse_instant("2026-11-22T10:00:00+08:00"), SH)
    assert format_instant(month_start(month, SH)) == "2026-10-31T16:00:00Z"
    assert format_instant(month_start(month - 11, SH)) == "2025-11-30T16:00:00Z"
