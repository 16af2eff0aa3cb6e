from __future__ import annotations

import pytest

from grader.core.money import MoneyError, parse_minor, to_decimal


@pytest.mark.parametrize(
    ("value", "minor"),
    [
        ("1", 100),
        ("0.01", 1),
        ("12.3", 1230),
        ("12.34", 1234),
        (12.34, 1234),
        (0.1, 10),
        (166.67, 16667),
        (5000, 500000),
        (1e3, 100000),
        ("999999999999.99", 99999999999999),
        (999999999999.99, 99999999999999),
    ],
)
def test_parses_exact_minor_units(value: object, minor: int) -> None:
    assert parse_minor(value) == minor


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("1.234", "at most 2 decimals"),
        (1.234, "at most 2 decimals"),
        ("-1", "plain decimal"),
        (-1, "> 0"),
        (0, "> 0"),
        ("0.00", "> 0"),
        ("1e3", "plain decimal"),
        ("1,000", "plain decimal"),
        (" 1", "plain decimal"),
        ("1000000000000", "< 10^12"),
        (1e12, "< 10^12"),
        (True, "string or a number"),
        (None, "string or a number"),
        ([1], "string or a number"),
        (float("nan"), "plain decimal"),
    ],
)
def test_rejects_bad_amounts(value: object, why: str) -> None:
    with pytest.raises(MoneyError, match=why.replace("^", r"\^")):
        parse_minor(value)


def test_zero_allowed_for_gross_profit() -> None:
    assert parse_minor("0", allow_zero=True) == 0
    assert parse_minor(0, allow_zero=True) == 0


def test_float_sum_trap_is_exact() -> None:
    # 0.1 + 0.2 != 0.3 in binary floats; in minor units it is exact.
    assert parse_minor(0.1) + parse_minor(0.2) == parse_minor(0.3)
    assert str(to_decimal(parse_minor("166.67") * 2 + parse_minor("166.66"))) == "500.00"


@pytest.mark.parametrize("text", ["1" * 5000, "0" * 5000 + "1" * 13, "9" * 13 + ".99"])
def test_an_amount_of_many_digits_is_refused_not_a_crash(text: str) -> None:
    """Found by the replay file property test: 5,000 digits raised ValueError from int()."""
    with pytest.raises(MoneyError, match=r"must be < 10\^12"):
        parse_minor(text)
    assert parse_minor("0" * 5000 + "12.5") == 1250
