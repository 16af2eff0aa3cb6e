"""Policies: TOML files -> frozen Policy objects, validated once at load.

The format is documented in docs/policies.md. Every number is read as an
exact Decimal (never a float). An invalid file raises PolicyError with a
message naming the file, the line and the key. The reading is in three
pieces: this module (the policy, its tiers and rules), grader.core.policylines
(its lines and their bands) and grader.core.policyread (numbers, conditions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from importlib.resources.abc import Traversable
from math import lcm
from pathlib import Path, PurePath
from typing import Any

from grader.core import tomlguard
from grader.core.clock import zone
from grader.core.errors import PolicyError
from grader.core.metricref import DEPENDS_ON
from grader.core.policylines import Line, LinesReader, cmp
from grader.core.policyread import Bound
from grader.core.rational import Ratio
from grader.core.tomlpos import Locator

KINDS = ("scorecard", "linear")
# Bounds on a policy (docs/policies.md, "Limits"; the file's size and nesting: tomlguard):
# far above any real policy, low enough that a malformed or hostile file is refused at
# once instead of taking minutes.
MAX_TIERS = 100  # lines, bands and digits: grader.core.policylines, grader.core.policyread


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


class _Builder(LinesReader):
    """Turns a parsed TOML document into a Policy, raising located errors: the top-level
    keys, the rules, the tiers and the support priority here; the lines and their bands
    in LinesReader (grader.core.policylines); numbers and conditions in DocReader
    (grader.core.policyread)."""

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
        super().__init__(doc, loc)
        self.default_name = default_name

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
        ahead = cmp(a.value, b.value)
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
