from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grader.core.errors import PolicyError
from grader.core.policyread import parse_condition
from tests.conftest import PRESETS, policy_text, preset

HEAD = 'name = "t"\nversion = "2"\n'
TIERS = '[[tiers]]\nname = "A"\nmin = ">= 80"\n\n[[tiers]]\nname = "B"\n'
LINE = '[[lines]]\nmetric = "sales(12)"\nbands = [["<= 0", 0], ["> 0", 10]]\n'


def test_presets_load_as_tabled() -> None:
    abc = preset("abc-100")
    assert abc.tier_names == ("A", "B", "C")
    assert [ln.metric.key for ln in abc.lines] == ["monthly_avg_sales(12)", "avg_payment_days(12)"]
    sabcd = preset("sabcd-weighted")
    assert sabcd.tier_names == ("S", "A", "B", "C", "D")
    assert sabcd.longest_window == 36
    assert (sabcd.downgrade_margin, sabcd.min_days_in_tier) == ((2, 1), 30)
    assert sum(ln.weight[0] / ln.weight[1] for ln in sabcd.lines) == pytest.approx(1)
    stars = preset("stars")
    assert stars.kind == "linear" and stars.lines[0].weight == (1, 10)
    assert stars.tiers[-2].minimum is not None and not stars.tiers[-2].minimum.inclusive


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        (
            HEAD + TIERS + '[[lines]]\nmetric = "salez(12)"\nbands = [["> 0", 1]]\n',
            10,
            "unknown metric 'salez(12)'",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales"\nbands = [["> 0", 1]]\n',
            10,
            "must be written sales(N)",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales(0)"\nbands = [["> 0", 1]]\n',
            10,
            "window must be",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\nbands = [\n ["<= 10", 0],\n'
            ' [">= 10", 5],\n]\n',
            13,
            "overlap",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\nbands = [\n ["< 10", 0],\n'
            ' ["> 10", 5],\n]\n',
            13,
            "leave a gap",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\nbands = [\n ["> 0", 5],\n]\n',
            11,
            "no band covers the lowest",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "purchase_count(12)"\nbands = [\n ["== 0", 0],\n'
            ' [">= 2", 5],\n]\n',
            13,
            "leave a gap",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\nbands = [\n ["< 10", 0],\n'
            ' [">= 10 and < 5", 5],\n]\n',
            13,
            "matches no value",
        ),
        (
            HEAD + '[[tiers]]\nname = "A"\nmin = ">= 60"\n\n[[tiers]]\nname = "B"\nmin = ">= 80"\n'
            '\n[[tiers]]\nname = "C"\n' + LINE,
            9,
            "best first",
        ),
        (
            HEAD + '[[tiers]]\nname = "A"\nmin = ">= 80"\n\n[[tiers]]\nname = "B"\nmin = "> 80"\n'
            '\n[[tiers]]\nname = "C"\n' + LINE,
            9,
            "best first",
        ),
        (
            HEAD
            + '[[tiers]]\nname = "A"\nmin = ">= 80"\n\n[[tiers]]\nname = "B"\nmin = "> 1"\n'
            + LINE,
            9,
            "has no min",
        ),
        (HEAD + '[[tiers]]\nname = "A"\n\n[[tiers]]\nname = "B"\n' + LINE, 3, "missing min"),
        (
            HEAD + '[[tiers]]\nname = "A"\nmin = "<= 80"\n\n[[tiers]]\nname = "B"\n' + LINE,
            5,
            "'>= N' or '> N'",
        ),
        (
            HEAD
            + TIERS
            + LINE.replace("bands", "weight = 0.5\nbands")
            + LINE.replace("sales(12)", "sales(36)").replace("bands", "weight = 0.4\nbands"),
            11,
            "weights must sum to 1",
        ),
        (
            HEAD
            + TIERS
            + LINE.replace("bands", "weight = 1\nbands")
            + LINE.replace("sales(12)", "sales(36)"),
            13,
            "every line needs a weight",
        ),
        (HEAD + TIERS + LINE + LINE, 13, "used twice"),
        (HEAD + 'colour = "red"\n' + TIERS + LINE, 3, "unknown key 'colour'"),
        (HEAD + 'timezone = "Mars/Olympus"\n' + TIERS + LINE, 3, "unknown IANA timezone"),
        (HEAD + 'currency = "yuan"\n' + TIERS + LINE, 3, "ISO 4217"),
        (HEAD + "[rules]\ndowngrade_margin = -1\n" + TIERS + LINE, 4, "must be >= 0"),
        (HEAD + "[rules]\nmin_days = 3\n" + TIERS + LINE, 4, "unknown key 'min_days'"),
        (HEAD + 'support_priority = ["A"]\n' + TIERS + LINE, 3, "every tier exactly once"),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\nbands = [["about 5", 0]]\n',
            11,
            "bad condition",
        ),
        (
            HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\npoints = "value"\nbands = []\n',
            9,
            "either bands or points",
        ),
        (
            HEAD + 'kind = "linear"\n' + TIERS + '[[terms]]\nmetric = "sales(12)"\n',
            10,
            "missing coefficient",
        ),
        (HEAD + TIERS + "x = [\n", 0, "invalid TOML"),
    ],
)
def test_invalid_policies_name_file_line_and_key(text: str, line: int, needle: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy_text(text)
    message = str(info.value)
    assert needle in message
    if line == 0:  # a syntax error: tomllib's own position
        assert message.startswith("test.toml: invalid TOML")
    else:
        assert re.match(rf"test\.toml:{line}: \S+: ", message), message


def test_policy_without_rules_defaults_to_no_downgrade_rules() -> None:
    policy = policy_text(HEAD + TIERS + LINE)
    assert (policy.downgrade_margin, policy.min_days_in_tier) == ((0, 1), 0)
    assert policy.version == "2" and policy.timezone == "Asia/Shanghai"
    assert policy.support_priority == ("A", "B")


@pytest.mark.parametrize(
    ("text", "lo", "hi"),
    [
        (">= 20000", ((20000, 1), True), None),
        ("> 10000 and < 20000", ((10000, 1), False), ((20000, 1), False)),
        ("<= 0.10", None, ((1, 10), True)),
        ("== 0", ((0, 1), True), ((0, 1), True)),
        ("<5", None, ((5, 1), False)),
    ],
)
def test_conditions(text: str, lo: object, hi: object) -> None:
    low, high = parse_condition(text)
    assert (None if low is None else (low.value, low.inclusive)) == lo
    assert (None if high is None else (high.value, high.inclusive)) == hi


def test_every_preset_file_is_valid() -> None:
    names = sorted(p.stem for p in PRESETS.glob("*.toml"))
    assert names == ["abc-100", "sabcd-weighted", "stars"]
    for name in names:
        assert preset(name).name == name


# -- issue 19: any text is a Policy or one PolicyError line naming the file -------------

def many_tiers(count: int) -> str:
    tiers = "".join(f'[[tiers]]\nname = "T{i}"\nmin = ">= {count - i}"\n' for i in range(count))
    return HEAD + tiers + '[[tiers]]\nname = "last"\n' + LINE


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "invalid TOML: nested deeper than 16 levels"),
        ("x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", "nested deeper than 16 levels"),
        ("[" + ".".join(["t"] * 20) + "]\n", "a dotted key of more than 16 parts"),
        ("description" + ".d" * 20_000 + " = 1\n", "a dotted key of more than 16 parts"),
        ("scale = " + "9" * 5000 + "\n", "a number with too many digits"),
        ("scale = 1e999999999\n" + TIERS + LINE, "scale: at most 30 digits"),
        ("scale = 1e-31\n" + TIERS + LINE, "scale: at most 30 digits"),
        (HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\nbands = [["<= 1e9", 0]]\n',
         "bad condition"),
        (HEAD + TIERS + '[[lines]]\nmetric = "sales(12)"\nbands = [["<= ' + "9" * 31
         + '", 0], ["> 0", 1]]\n', "at most 30 digits"),
        (many_tiers(100_000), "more than the 1,000,000 read"),
        (many_tiers(101), "tiers: 102 tiers: a policy has at most 100"),
        (HEAD + TIERS + "".join(f'[[lines]]\nmetric = "sales({i})"\nbands = [["<= 0", 0], '
                                '["> 0", 1]]\n' for i in range(1, 102)),
         "lines: 101 [[lines]]: a policy has at most 100"),
        (HEAD + TIERS + '[[lines]]\nmetric = "purchase_count(12)"\nbands = ['
         + ", ".join(f'["== {i}", 0]' for i in range(101)) + ', ["> 100", 0]]\n',
         "102 bands: a line has at most 100"),
        (HEAD + TIERS + LINE + '[rules]\n"a\\nb" = 1\n', "rules.a\\nb: unknown key"),
        (HEAD + 'support_priority = [{}, "B"]\n[[tiers]]\nname = "{}"\nmin = ">= 1"\n'
         '[[tiers]]\nname = "B"\n' + LINE, "support_priority: must list every tier"),
    ],
)
def test_nested_huge_or_odd_policies_are_one_line(text: str, needle: str) -> None:
    with pytest.raises(PolicyError) as info:
        policy_text(text)
    message = str(info.value)
    assert message.startswith("test.toml") and needle in message, message
    assert "\n" not in message


def test_the_bounds_leave_room_for_every_preset() -> None:
    policy = policy_text(many_tiers(99))
    assert len(policy.tiers) == 100


def toml_value(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.dictionaries(st.sampled_from(["name", "min", "metric", "bands", "a", "b.c"]),
                        children, max_size=3).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"),
    )


SCALARS = st.one_of(
    st.integers().map(str), st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.text(max_size=20).map(lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"')
                             .encode("unicode_escape").decode().replace("\\\\", "\\") + '"'),
    st.sampled_from(['">= 80"', '"> 0 and <= 10"', '"sales(12)"', "true", "1e400", "-0",
                     '"value"', "'A'", '"Asia/Shanghai"', "1979-05-27"]),
)
VALUES = st.recursive(SCALARS, toml_value, max_leaves=12)
KEYS = st.sampled_from(["name", "version", "kind", "currency", "timezone", "scale",
                        "support_priority", "rules", "tiers", "lines", "terms", "description",
                        "min", "metric", "bands", "points", "missing", "weight", "coefficient",
                        "downgrade_margin", "min_days_in_tier", "x", '"q\\nk"', "a.b"])
BASE = HEAD + TIERS + LINE


@settings(max_examples=400, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, BASE.count("\n")), KEYS, VALUES), max_size=4),
       noise=st.text(max_size=40), nesting=st.integers(0, 3000))
def test_any_policy_text_is_a_policy_or_one_line_naming_the_file(
    edits: list[tuple[int, str, str]], noise: str, nesting: int
) -> None:
    lines = BASE.splitlines()
    for where, key, value in edits:
        lines.insert(where, f"{key} = {value}")
    texts = ["\n".join(lines) + "\n", "\n".join(lines) + noise,
             f"x = {'[' * nesting}{']' * nesting}\n" + BASE]
    for text in texts:
        try:
            policy_text(text)
        except PolicyError as exc:
            message = str(exc)
            assert message.startswith("test.toml") and "\n" not in message, message
