"""Reading a policy's [[lines]] (scorecard) or [[terms]] (linear) and their bands.

A scorecard line's bands must tile its metric's domain: sorted by their lower
bound, none empty, with no gap and no overlap (integer metrics are compared
as integer ranges).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import Any

from grader.core.metricref import MetricRef, parse_metric
from grader.core.policyread import Bound, DocReader
from grader.core.rational import Ratio

MAX_LINES = 100
MAX_BANDS = 100  # per line
ONE: Ratio = (1, 1)


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


class LinesReader(DocReader):
    """The lines (or terms) of a policy document."""

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


def cmp(a: Ratio, b: Ratio) -> int:
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
    c = cmp(band.lo.value, band.hi.value)
    return c > 0 or (c == 0 and not (band.lo.inclusive and band.hi.inclusive))


def _adjacency(hi: Bound | None, lo: Bound | None, integer: bool) -> str:
    """'ok' when a band ending at ``hi`` is followed exactly by one starting at ``lo``."""
    if hi is None or lo is None:
        return "overlap"
    if integer:
        end = _int_range(None, hi)[1]
        start = _int_range(lo, None)[0]
        return "ok" if start == end + 1 else ("overlap" if start <= end else "leave a gap")
    c = cmp(hi.value, lo.value)
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
    c = cmp(lo.value, low)
    return c < 0 or (c == 0 and lo.inclusive)


def _covers_to(hi: Bound | None, high: Ratio | None, integer: bool) -> bool:
    if hi is None:
        return True
    if high is None:
        return False
    c = cmp(hi.value, high)
    return c > 0 or (c == 0 and hi.inclusive)
