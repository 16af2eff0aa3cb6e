"""Policies: TOML files -> frozen Policy objects, validated once at load.

The format is documented in docs/policies.md. Every number is read as an
exact Decimal (never a float). An invalid file raises PolicyError with a
message naming the file, the line and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from importlib.resources.abc import Traversable
from itertools import pairwise
from math import lcm
from pathlib import Path, PurePath
from typing import Any

from grader.core import tomlguard
from grader.core.clock import zone
from grader.core.errors import PolicyError
from grader.core.metricref import DEPENDS_ON, MetricRef, parse_metric
from grader.core.rational import Ratio, ratio
from grader.core.tomlpos import Locator

KINDS = ("scorecard", "linear")
# Bounds on a policy (docs/policies.md, "Limits"; the file's size and nesting: tomlguard):
# far above any real policy, low enough that a malformed or hostile file is refused at
# once instead of taking minutes.
MAX_TIERS = 100
MAX_LINES = 100
MAX_BANDS = 100  # per line
MAX_DIGITS = 30  # before, and after, the decimal point of any number
ONE: Ratio = (1, 1)
ZERO: Ratio = (0, 1)


@dataclass(frozen=True, slots=True)
class Bound:
    """One edge: a value and whether the value itself is included."""

    value: Ratio
    inclusive: bool


@dataclass(frozen=True, slots=True)
class Band:
    """Points for metric values between ``lo`` and ``hi`` (None = unbounded)."""

    lo: Bound | None
    hi: Bound | None
    points: Ratio
    text: str


@dataclass(frozen=True, slots=True)
class Line:
    """One scorecard line or linear term.

    Its points are the band's points, or (``bands`` empty) the metric value
    itself; it contributes ``weight * points`` to the sum (for a linear term
    the weight is the coefficient).
    """

    metric: MetricRef
    bands: tuple[Band, ...]
    missing: Ratio
    weight: Ratio


@dataclass(frozen=True, slots=True)
class Tier:
    """A tier and its minimum score (None for the last, catch-all tier)."""

    name: str
    minimum: Bound | None


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated grading policy."""

    name: str
    version: str
    kind: str
    currency: str
    timezone: str
    scale: Ratio
    lines: tuple[Line, ...]
    tiers: tuple[Tier, ...]
    support_priority: tuple[str, ...]
    downgrade_margin: Ratio
    min_days_in_tier: int
    source: str
    # sha256 of the policy's meaning: its TOML document without comments, layout or
    # `description` (docs/policies.md, "Versions"); a new meaning needs a new version
    digest: str = ""
    tier_names: tuple[str, ...] = field(init=False)
    longest_window: int = field(init=False)
    _ranks: dict[str, int] = field(init=False, repr=False, compare=False)
    # Scoring plan: each line's weight * scale as an integer over ``weight_den``.
    plan: tuple[tuple[Line, int], ...] = field(init=False, repr=False, compare=False)
    weights: tuple[int, ...] = field(init=False, repr=False, compare=False)  # of the plan
    weight_den: int = field(init=False, repr=False, compare=False)
    line_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # The lines (with their index) by what their metrics depend on (metricref.DEPENDS_ON).
    groups: tuple[tuple[str, tuple[tuple[int, Line], ...]], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        den = self.scale[1]
        for line in self.lines:
            den = lcm(den, line.weight[1])
        plan = tuple(
            (ln, ln.weight[0] * self.scale[0] * den // (ln.weight[1] * self.scale[1]))
            for ln in self.lines
        )
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "weights", tuple(weight for _line, weight in plan))
        object.__setattr__(self, "weight_den", den)
        object.__setattr__(self, "line_keys", tuple(ln.metric.key for ln in self.lines))
        groups: dict[str, list[tuple[int, Line]]] = {}
        for i, ln in enumerate(self.lines):
            groups.setdefault(DEPENDS_ON[ln.metric.name], []).append((i, ln))
        object.__setattr__(self, "groups", tuple((k, tuple(v)) for k, v in groups.items()))
        names = tuple(t.name for t in self.tiers)
        object.__setattr__(self, "tier_names", names)
        object.__setattr__(self, "_ranks", {name: i for i, name in enumerate(names)})
        object.__setattr__(
            self, "longest_window", max((ln.metric.window or 1 for ln in self.lines), default=1)
        )

    def rank(self, tier: str) -> int:
        """0 for the best tier, 1 for the next, ...; raises KeyError for an unknown tier."""
        return self._ranks[tier]


def load_policy(path: str | Path | Traversable) -> Policy:
    """Read and validate one policy file (a path, or a preset in the package)."""
    path = Path(path) if isinstance(path, str) else path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read policy file: {exc}") from None
    return parse_policy(text, source=str(path), default_name=PurePath(path.name).stem)


def meaning_digest(doc: dict[str, Any]) -> str:
    """sha256 (hex) of a policy document, canonical: keys sorted, numbers as written."""
    import hashlib
    import json

    meaning = {k: v for k, v in doc.items() if k != "description"}
    canonical = json.dumps(meaning, sort_keys=True, separators=(",", ":"), default=str,
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_policy(text: str, *, source: str, default_name: str) -> Policy:
    """Validate policy TOML text; ``source`` names it in errors."""
    try:
        doc = tomlguard.loads(text, parse_float=Decimal)
    except tomlguard.UnreadableToml as exc:
        raise PolicyError(f"{source}: invalid TOML: {exc}") from None
    return _Builder(doc, Locator(text, source), default_name).build()


class _Builder:
    """Turns a parsed TOML document into a Policy, raising located errors."""

    TOP_KEYS = frozenset(
        {
            "name",
            "version",
            "description",
            "kind",
            "currency",
            "timezone",
            "scale",
            "support_priority",
            "rules",
            "tiers",
            "lines",
            "terms",
        }
    )

    def __init__(self, doc: dict[str, Any], loc: Locator, default_name: str) -> None:
        self.doc, self.loc, self.default_name = doc, loc, default_name
        self.fail = loc.error  # fail(key, message, table=, index=, needle=) -> PolicyError

    def build(self) -> Policy:
        doc = self.doc
        for key in doc:
            if key not in self.TOP_KEYS:
                raise self.fail(key, f"unknown key {key!r}")
        kind = self._choice("kind", KINDS, "scorecard")
        tiers = self._tiers()
        lines = self._lines(kind)
        margin, min_days = self._rules()
        return Policy(
            name=self._text("name", self.default_name),
            version=self._text("version", "1"),
            kind=kind,
            currency=self._currency(),
            timezone=self._timezone(),
            scale=self._number(doc.get("scale", 1), "scale", positive=True),
            lines=lines,
            tiers=tiers,
            support_priority=self._support_priority(tiers),
            downgrade_margin=margin,
            min_days_in_tier=min_days,
            source=self.loc.source,
            digest=meaning_digest(doc),
        )

    # -- scalar helpers ---------------------------------------------------
    def _text(self, key: str, default: str) -> str:
        value = self.doc.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "must be a non-empty string")
        return value

    def _choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.doc.get(key, default)
        if value not in options:
            raise self.fail(key, f"must be one of {', '.join(options)}")
        return str(value)

    def _currency(self) -> str:
        value = self.doc.get("currency", "CNY")
        if (
            not isinstance(value, str)
            or len(value) != 3
            or not value.isupper()
            or not value.isalpha()
        ):
            raise self.fail("currency", "must be an ISO 4217 code like CNY")
        return value

    def _timezone(self) -> str:
        value = self.doc.get("timezone", "Asia/Shanghai")
        try:
            zone(str(value))
        except KeyError:
            raise self.fail("timezone", f"unknown IANA timezone {value!r}") from None
        return str(value)

    def _number(
        self,
        value: object,
        key: str,
        *,
        positive: bool = False,
        nonnegative: bool = False,
        **where: Any,
    ) -> Ratio:
        if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
            raise self.fail(key, "must be a number", **where)
        if not value.is_finite() if isinstance(value, Decimal) else False:
            raise self.fail(key, "must be a finite number", **where)
        if not _within_digits(value):
            raise self.fail(key, f"at most {MAX_DIGITS} digits before and after the point",
                            **where)
        if positive and value <= 0:
            raise self.fail(key, "must be > 0", **where)
        if nonnegative and value < 0:
            raise self.fail(key, "must be >= 0", **where)
        return ratio(value)

    # -- rules, tiers, support priority ------------------------------------
    def _rules(self) -> tuple[Ratio, int]:
        rules = self.doc.get("rules", {})
        if not isinstance(rules, dict):
            raise self.fail("rules", "must be a table")
        for key in rules:
            if key not in ("downgrade_margin", "min_days_in_tier"):
                raise self.fail(f"rules.{key}", f"unknown key {key!r}", table="rules", needle=key)
        margin = self._number(
            rules.get("downgrade_margin", 0),
            "rules.downgrade_margin",
            nonnegative=True,
            table="rules",
            needle="downgrade_margin",
        )
        days = rules.get("min_days_in_tier", 0)
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise self.fail(
                "rules.min_days_in_tier",
                "must be a whole number >= 0",
                table="rules",
                needle="min_days_in_tier",
            )
        return margin, days

    def _tiers(self) -> tuple[Tier, ...]:
        raw = self.doc.get("tiers")
        if not isinstance(raw, list) or len(raw) < 2:
            raise self.fail("tiers", "needs at least two [[tiers]] tables, best first")
        if len(raw) > MAX_TIERS:
            raise self.fail("tiers", f"{len(raw)} tiers: a policy has at most {MAX_TIERS}")
        tiers: list[Tier] = []
        for i, entry in enumerate(raw):
            tiers.append(self._tier(i, entry, last=i == len(raw) - 1))
        seen: set[str] = set()
        for i, tier in enumerate(tiers):
            if tier.name in seen:
                raise self.fail(
                    f"tiers[{i}].name", f"duplicate tier {tier.name!r}", table="tiers", index=i
                )
            seen.add(tier.name)
        for i in range(1, len(tiers) - 1):
            self._check_descending(tiers[i - 1], tiers[i], i)
        return tuple(tiers)

    def _tier(self, i: int, entry: object, *, last: bool) -> Tier:
        where: dict[str, Any] = {"table": "tiers", "index": i}
        if not isinstance(entry, dict):
            raise self.fail(f"tiers[{i}]", "must be a table with name and min", **where)
        for key in entry:
            if key not in ("name", "min"):
                raise self.fail(f"tiers[{i}].{key}", f"unknown key {key!r}", needle=key, **where)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.fail(
                f"tiers[{i}].name", "must be a non-empty string", needle="name", **where
            )
        if last:
            if "min" in entry:
                raise self.fail(
                    f"tiers[{i}].min",
                    "the last tier takes every other score: it has no min",
                    needle="min",
                    **where,
                )
            return Tier(name, None)
        if "min" not in entry:
            raise self.fail(f"tiers[{i}].min", "missing min (only the last tier has none)", **where)
        bound = self._condition(entry["min"], f"tiers[{i}].min", needle="min", **where)
        if bound[1] is not None or bound[0] is None:
            raise self.fail(
                f"tiers[{i}].min", "a minimum is '>= N' or '> N'", needle="min", **where
            )
        return Tier(name, bound[0])

    def _check_descending(self, upper: Tier, lower: Tier, i: int) -> None:
        assert upper.minimum is not None and lower.minimum is not None
        a, b = upper.minimum, lower.minimum
        ahead = _cmp(a.value, b.value)
        if ahead < 0 or (ahead == 0 and not (b.inclusive and not a.inclusive)):
            raise self.fail(
                f"tiers[{i}].min",
                f"tiers must be best first: {lower.name!r} must need less than {upper.name!r}",
                table="tiers",
                index=i,
                needle="min",
            )

    def _support_priority(self, tiers: tuple[Tier, ...]) -> tuple[str, ...]:
        names = tuple(t.name for t in tiers)
        value = self.doc.get("support_priority", list(names))
        if (
            not isinstance(value, list)
            or not all(isinstance(name, str) for name in value)
            or sorted(value) != sorted(names)
            or len(set(value)) != len(value)
        ):
            raise self.fail(
                "support_priority", "must list every tier exactly once, first served first"
            )
        return tuple(value)

    # -- lines and bands ----------------------------------------------------
    def _lines(self, kind: str) -> tuple[Line, ...]:
        table = "lines" if kind == "scorecard" else "terms"
        other = "terms" if kind == "scorecard" else "lines"
        if other in self.doc:
            raise self.fail(other, f"a {kind} policy has [[{table}]], not [[{other}]]")
        raw = self.doc.get(table)
        if not isinstance(raw, list) or not raw:
            raise self.fail(table, f"needs at least one [[{table}]] table")
        if len(raw) > MAX_LINES:
            raise self.fail(table, f"{len(raw)} [[{table}]]: a policy has at most {MAX_LINES}")
        lines = tuple(self._line(kind, table, i, entry) for i, entry in enumerate(raw))
        seen: set[str] = set()
        for i, key in enumerate(ln.metric.key for ln in lines):
            if key in seen:
                raise self.fail(
                    f"{table}[{i}].metric",
                    f"metric {key} is used twice",
                    table=table,
                    index=i,
                    needle="metric",
                )
            seen.add(key)
        if kind == "scorecard":
            self._check_weights(lines, raw)
        return lines

    def _line(self, kind: str, table: str, i: int, entry: object) -> Line:
        where: dict[str, Any] = {"table": table, "index": i}
        allowed = (
            ("metric", "bands", "points", "missing", "weight")
            if kind == "scorecard"
            else ("metric", "coefficient", "missing")
        )
        if not isinstance(entry, dict):
            raise self.fail(f"{table}[{i}]", "must be a table", **where)
        for key in entry:
            if key not in allowed:
                raise self.fail(f"{table}[{i}].{key}", f"unknown key {key!r}", needle=key, **where)
        try:
            metric = parse_metric(entry.get("metric"))
        except ValueError as exc:
            raise self.fail(f"{table}[{i}].metric", str(exc), needle="metric", **where) from None
        missing = self._number(
            entry.get("missing", 0), f"{table}[{i}].missing", needle="missing", **where
        )
        if kind == "linear":
            if "coefficient" not in entry:
                raise self.fail(f"{table}[{i}].coefficient", "missing coefficient", **where)
            coef = self._number(
                entry["coefficient"], f"{table}[{i}].coefficient", needle="coefficient", **where
            )
            return Line(metric, (), missing, coef)
        weight = ONE
        if "weight" in entry:
            weight = self._number(
                entry["weight"], f"{table}[{i}].weight", positive=True, needle="weight", **where
            )
        return Line(metric, self._bands(entry, metric, f"{table}[{i}]", where), missing, weight)

    def _bands(
        self, entry: dict[str, Any], metric: MetricRef, key: str, where: dict[str, Any]
    ) -> tuple[Band, ...]:
        if ("bands" in entry) == ("points" in entry):
            raise self.fail(key, 'a line has either bands or points = "value"', **where)
        if "points" in entry:
            if entry["points"] != "value":
                raise self.fail(
                    f"{key}.points",
                    'points must be "value" (the metric itself)',
                    needle="points",
                    **where,
                )
            return ()
        raw = entry["bands"]
        if not isinstance(raw, list) or not raw:
            raise self.fail(
                f"{key}.bands", "must be a list of [condition, points]", needle="bands", **where
            )
        if len(raw) > MAX_BANDS:
            raise self.fail(f"{key}.bands", f"{len(raw)} bands: a line has at most {MAX_BANDS}",
                            needle="bands", **where)
        bands = [self._band(b, f"{key}.bands[{j}]", where) for j, b in enumerate(raw)]
        return self._tile(bands, metric, f"{key}.bands", where)

    def _band(self, raw: object, key: str, where: dict[str, Any]) -> Band:
        if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], str):
            raise self.fail(
                key,
                'a band is ["condition", points], e.g. [">= 20000", 70]',
                needle="bands",
                **where,
            )
        lo, hi = self._condition(raw[0], key, needle=raw[0], **where)
        points = self._number(raw[1], key, needle=raw[0], **where)
        return Band(lo, hi, points, raw[0])

    def _condition(self, text: object, key: str, **where: Any) -> tuple[Bound | None, Bound | None]:
        try:
            return parse_condition(text)
        except ValueError as exc:
            raise self.fail(key, str(exc), **where) from None

    def _tile(
        self, bands: list[Band], metric: MetricRef, key: str, where: dict[str, Any]
    ) -> tuple[Band, ...]:
        """Sort bands and check they cover the metric's domain once, with no gap."""
        domain = metric.domain
        bands.sort(key=lambda b: _lower_key(b.lo))
        for band in bands:
            if _empty(band, domain.integer):
                raise self.fail(
                    key, f"band {band.text!r} matches no value", needle=band.text, **where
                )
        if not _covers_from(bands[0].lo, domain.low, domain.integer):
            raise self.fail(
                key,
                f"bands leave a gap: no band covers the lowest values of {metric.key}",
                needle="bands",
                **where,
            )
        for prev, band in pairwise(bands):
            gap = _adjacency(prev.hi, band.lo, domain.integer)
            if gap != "ok":
                raise self.fail(
                    key, f"bands {gap}: {prev.text!r} and {band.text!r}", needle=band.text, **where
                )
        if not _covers_to(bands[-1].hi, domain.high, domain.integer):
            raise self.fail(
                key,
                f"bands leave a gap: no band covers the highest values of {metric.key}",
                needle="bands",
                **where,
            )
        return tuple(bands)

    def _check_weights(self, lines: tuple[Line, ...], raw: list[Any]) -> None:
        weighted = [("weight" in entry) for entry in raw]
        if not any(weighted):
            return
        if not all(weighted):
            i = weighted.index(False)
            raise self.fail(
                f"lines[{i}].weight",
                "every line needs a weight when any has one",
                table="lines",
                index=i,
            )
        total = sum(Decimal(ln.weight[0]) / Decimal(ln.weight[1]) for ln in lines)
        if total != 1:
            raise self.fail(
                "lines.weight",
                f"weights must sum to 1, they sum to {total}",
                table="lines",
                index=0,
                needle="weight",
            )


def parse_condition(text: object) -> tuple[Bound | None, Bound | None]:
    """Parse ``">= 10"``, ``"> 5 and <= 10"``, ``"== 0"`` into (low, high) bounds."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a condition is a string like '>= 80' or '> 5 and <= 10'")
    lo: Bound | None = None
    hi: Bound | None = None
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _COMPARISON.fullmatch(part)
        if match is None:
            raise ValueError(f"bad condition {text!r}: write e.g. '>= 80' or '> 5 and <= 10'")
        op, num = match.groups()
        if not _within_digits(Decimal(num)):
            raise ValueError(f"bad condition {text!r}: at most {MAX_DIGITS} digits before and "
                             "after the point")
        value = ratio(Decimal(num))
        if op in (">", ">=", "=="):
            if lo is not None:
                raise ValueError(f"bad condition {text!r}: two lower bounds")
            lo = Bound(value, op != ">")
        if op in ("<", "<=", "=="):
            if hi is not None:
                raise ValueError(f"bad condition {text!r}: two upper bounds")
            hi = Bound(value, op != "<")
    return lo, hi


def _within_digits(value: int | Decimal) -> bool:
    """Whether a finite number has at most MAX_DIGITS digits before and after the point."""
    if isinstance(value, int):
        limit: int = 10**MAX_DIGITS
        return abs(value) < limit
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -MAX_DIGITS and (
        not value or value.adjusted() < MAX_DIGITS)


_COMPARISON = re.compile(r"(>=|<=|==|>|<)\s*([-+]?\d+(?:\.\d+)?)", re.ASCII)


def _cmp(a: Ratio, b: Ratio) -> int:
    left, right = a[0] * b[1], b[0] * a[1]
    return (left > right) - (left < right)


def _lower_key(lo: Bound | None) -> tuple[int, Fraction, int]:
    if lo is None:
        return (0, Fraction(0), 0)
    return (1, Fraction(*lo.value), 0 if lo.inclusive else 1)


def _int_range(lo: Bound | None, hi: Bound | None) -> tuple[float | int, float | int]:
    """The closed integer range a band admits (floats for infinities)."""
    low: float | int = float("-inf")
    high: float | int = float("inf")
    if lo is not None:
        n, d = lo.value
        low = -(-n // d) if lo.inclusive else n // d + 1
    if hi is not None:
        n, d = hi.value
        high = n // d if hi.inclusive else -(-n // d) - 1
    return low, high


def _empty(band: Band, integer: bool) -> bool:
    if integer:
        low, high = _int_range(band.lo, band.hi)
        return low > high
    if band.lo is None or band.hi is None:
        return False
    c = _cmp(band.lo.value, band.hi.value)
    return c > 0 or (c == 0 and not (band.lo.inclusive and band.hi.inclusive))


def _adjacency(hi: Bound | None, lo: Bound | None, integer: bool) -> str:
    """'ok' when a band ending at ``hi`` is followed exactly by one starting at ``lo``."""
    if hi is None or lo is None:
        return "overlap"
    if integer:
        end = _int_range(None, hi)[1]
        start = _int_range(lo, None)[0]
        return "ok" if start == end + 1 else ("overlap" if start <= end else "leave a gap")
    c = _cmp(hi.value, lo.value)
    if c > 0 or (c == 0 and hi.inclusive and lo.inclusive):
        return "overlap"
    if c < 0 or (not hi.inclusive and not lo.inclusive):
        return "leave a gap"
    return "ok"


def _covers_from(lo: Bound | None, low: Ratio | None, integer: bool) -> bool:
    if lo is None:
        return True
    if low is None:
        return False
    if integer:
        return _int_range(lo, None)[0] <= low[0] // low[1]
    c = _cmp(lo.value, low)
    return c < 0 or (c == 0 and lo.inclusive)


def _covers_to(hi: Bound | None, high: Ratio | None, integer: bool) -> bool:
    if hi is None:
        return True
    if high is None:
        return False
    c = _cmp(hi.value, high)
    return c > 0 or (c == 0 and hi.inclusive)
