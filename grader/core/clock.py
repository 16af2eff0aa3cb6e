"""Time: RFC 3339 instants as integer microseconds, local dates and month windows.

Instants are held as integer microseconds since the Unix epoch (UTC). Local
dates are day ordinals (``date.toordinal()``) and local months are month
indexes (``year * 12 + month - 1``) in a policy's IANA timezone.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

US_PER_SECOND = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,  # RFC 3339 digits are ASCII; \d alone also matches Arabic-Indic or fullwidth ones
)

# Upper-case T and Z, no leap second, offsets within +-23:59: what fromisoformat reads exactly.
_COMMON = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:[0-5]\d(?:\.\d{1,9})?(?:Z|[+-][01]\d:[0-5]\d|[+-]2[0-3]:[0-5]\d)",
    re.ASCII,
)
_ONE_US = timedelta(microseconds=1)
# The instants grader accepts: 1000-01-01T00:00:00Z up to (not including) 9000-01-01T00:00:00Z.
# Far enough from datetime's years 1 and 9999 that a local date in any timezone, and a
# window of up to 120 months before it, stay representable; before 1970 is like any other.
MIN_INSTANT = -30_610_224_000 * US_PER_SECOND
MAX_INSTANT = 221_845_392_000 * US_PER_SECOND
#: Earlier than every instant grader accepts: "never" (no as_of, no horizon yet).
NEVER = -(2**62)


class TimestampError(ValueError):
    """A timestamp that is not RFC 3339 with an offset."""


def parse_instant(text: object) -> int:
    """Parse an RFC 3339 timestamp with offset to microseconds since the epoch."""
    if not isinstance(text, str):
        raise TimestampError("must be a string")
    if _COMMON.fullmatch(text):  # fast path: the C parser agrees on this subset of RFC 3339
        try:
            us: int = (datetime.fromisoformat(text) - _EPOCH) // _ONE_US
        except ValueError:
            pass  # e.g. 2026-02-30: the slow path says why
        else:
            return _in_range(us)
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise TimestampError("must be RFC 3339 with an offset, e.g. 2026-03-01T09:30:00+08:00")
    year, month, day, hour, minute, second = [int(g) for g in match.groups()[:6]]
    fraction, zulu, sign, off_h, off_m = match.groups()[6:]
    micros = int((fraction or "").ljust(6, "0")[:6])
    try:
        naive = datetime(year, month, day, hour, minute, min(second, 59), micros)
    except ValueError as exc:
        raise TimestampError(f"is not a real date and time ({exc})") from None
    offset = 0 if zulu else (int(off_h) * 60 + int(off_m)) * (1 if sign == "+" else -1)
    if not zulu and (int(off_h) > 23 or int(off_m) > 59):
        raise TimestampError("has an invalid offset")
    delta = naive - datetime(1970, 1, 1) - timedelta(minutes=offset)
    # A leap second (:60) is read as :59.999999, the last instant of the minute.
    leap = US_PER_SECOND - 1 if second == 60 else 0
    return _in_range(
        (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds + leap
    )


def _in_range(us: int) -> int:
    if not MIN_INSTANT <= us < MAX_INSTANT:
        raise TimestampError("must be from year 1000 to year 8999 (UTC)")
    return us


def format_instant(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 in UTC (``...Z``)."""
    seconds, micros = divmod(us, US_PER_SECOND)
    text = _format_second(seconds)
    if micros:
        text = text[:-1] + f".{micros:06d}".rstrip("0") + "Z"
    return text


@lru_cache(maxsize=4096)
def _format_second(seconds: int) -> str:
    days, second = divmod(seconds, 86_400)
    hour, second = divmod(second, 3600)
    minute, second = divmod(second, 60)
    return f"{_format_day(days)}T{hour:02d}:{minute:02d}:{second:02d}Z"


@lru_cache(maxsize=4096)
def _format_day(days: int) -> str:
    return (_EPOCH + timedelta(days=days)).date().isoformat()


@lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    """The IANA timezone ``name``; raises KeyError naming it when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise KeyError(name) from None


@lru_cache(maxsize=65536)
def local_day(us: int, tz: str) -> int:
    """The local date of instant ``us`` in ``tz``, as a day ordinal."""
    return datetime.fromtimestamp(us // US_PER_SECOND, zone(tz)).toordinal()


@lru_cache(maxsize=8192)
def month_of_day(ordinal: int) -> int:
    """The month index of a day ordinal."""
    d = date.fromordinal(ordinal)
    return d.year * 12 + d.month - 1


def local_month(us: int, tz: str) -> int:
    """The local month index of instant ``us`` in ``tz``."""
    return month_of_day(local_day(us, tz))


@lru_cache(maxsize=4096)
def month_start(month: int, tz: str) -> int:
    """The instant (microseconds) of local midnight on the first day of ``month``."""
    year, month0 = divmod(month, 12)
    start = datetime(year, month0 + 1, 1, tzinfo=zone(tz))
    return int(start.timestamp()) * US_PER_SECOND


def month_label(month: int) -> str:
    """A month index as ``YYYY-MM``."""
    year, month0 = divmod(month, 12)
    return f"{year:04d}-{month0 + 1:02d}"


def month_first_day(month: int) -> int:
    """The day ordinal of the first day of month index ``month``."""
    year, month0 = divmod(month, 12)
    return date(year, month0 + 1, 1).toordinal()


def months_later(ordinal: int, months: int) -> int:
    """The date ``months`` months after day ``ordinal``, on the same day of the month
    (the month's last day when it is shorter)."""
    d = date.fromordinal(ordinal)
    year, month0 = divmod(d.year * 12 + d.month - 1 + months, 12)
    first = date(year, month0 + 1, 1).toordinal()
    length = month_first_day(year * 12 + month0 + 1) - first
    return first + min(d.day, length) - 1
