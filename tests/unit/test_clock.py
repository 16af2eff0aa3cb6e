from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from grader.core.clock import (
    US_PER_SECOND,
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


@pytest.mark.parametrize(("tz", "year"), [
    ("Europe/London", 2025), ("Australia/Lord_Howe", 2025), ("Pacific/Chatham", 2025),
    ("America/Sao_Paulo", 2018), ("Asia/Kathmandu", 2025), ("Asia/Shanghai", 2025),
    # Iran (UTC+3:30) changed its clocks at local midnight, in the middle of a UTC
    # hour: the hour of the autumn change holds two local dates for one instant.
    ("Asia/Tehran", 2020),
])
def test_local_day_equals_zoneinfo_across_two_years_of_transitions(tz: str, year: int) -> None:
    # local_day keeps one UTC offset per UTC hour without a transition; the hours
    # around every transition must still give zoneinfo's date.
    from zoneinfo import ZoneInfo

    z = ZoneInfo(tz)
    start = int(datetime(year, 1, 1, tzinfo=UTC).timestamp())
    for second in range(start, start + 2 * 366 * 86_400, 1_800):
        for instant in (second, second + 1, second + 1_799):
            assert local_day(instant * US_PER_SECOND + 1, tz) == \
                datetime.fromtimestamp(instant, z).toordinal(), (tz, instant)
