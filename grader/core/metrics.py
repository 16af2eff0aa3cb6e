"""Metric functions over a CustomerState, as of its ``as_of``, in one timezone.

Every value is an exact (numerator, denominator) pair, or None when the metric
is missing. Money is in major units (minor units over 100). Window sums are
computed once per (timezone, N) and shared by the metrics that need them.
"""

from __future__ import annotations

from collections.abc import Callable

from grader.core.clock import local_day, month_of_day
from grader.core.metricref import MetricRef
from grader.core.rational import Ratio
from grader.core.state import CustomerState

MINOR = 100
# Window aggregate: (sales, refunds, gross_profit, gp_count, sale_count, active_months)
Window = tuple[int, int, int, int, int, int]


class MetricView:
    """The metrics of one customer in one timezone; values are memoised."""

    __slots__ = ("_deps", "_values", "_windows", "month", "state", "today", "tz")

    def __init__(self, state: CustomerState, tz: str, today: int | None = None) -> None:
        """``today``: another local day (ordinal) to compute the metrics on, as if the
        clock had ticked then with no new event (grader.core.atrisk looks ahead so)."""
        self.state = state
        self.tz = tz
        self.today = local_day(state.as_of, tz) if today is None else today
        self.month = month_of_day(self.today)
        self._windows: dict[int, Window] = {}
        self._values: dict[str, Ratio | None] = {}
        self._deps: dict[str, object] = {}

    def dependency(self, kind: str) -> object:
        """A key of what the metrics of a dependency ``kind`` read: equal keys, equal values.

        ``kind`` is a value of grader.core.metricref.DEPENDS_ON. Keys of two views
        of the same customer are comparable (grader.core.scoring.rescore).
        """
        deps = self._deps
        if kind in deps:
            return deps[kind]
        key = deps[kind] = _DEPENDENCY_KEYS[kind](self)
        return key

    def value(self, ref: MetricRef) -> Ratio | None:
        """The value of ``ref`` (None when missing)."""
        values = self._values
        key = ref.key
        if key in values:
            return values[key]
        value = values[key] = _FUNCTIONS[ref.name](self, ref)
        return value

    def window(self, months: int) -> Window:
        """Sums over the ``months`` local months ending with the as_of month."""
        agg = self._windows.get(months)
        if agg is None:
            first, last = self.month - months + 1, self.month
            sales = refunds = gp = gp_count = count = active = 0
            # a bucket is [SALES, REFUNDS, GP, GP_COUNT, COUNT] (grader.core.state)
            for month, (b_sales, b_refunds, b_gp, b_gp_count, b_count) in self.state.months.get(
                self.tz, {}
            ).items():
                if first <= month <= last:
                    sales += b_sales
                    refunds += b_refunds
                    gp += b_gp
                    gp_count += b_gp_count
                    count += b_count
                    active += b_count > 0
            agg = self._windows[months] = (sales, refunds, gp, gp_count, count, active)
        return agg

    def days_since(self, ts: int) -> int:
        """Local days from instant ``ts`` to as_of (never negative)."""
        return max(0, self.today - local_day(ts, self.tz))


def _n(ref: MetricRef) -> int:
    assert ref.window is not None
    return ref.window


def sales(view: MetricView, ref: MetricRef) -> Ratio:
    """Sales minus refunds dated in the window."""
    w = view.window(_n(ref))
    return (w[0] - w[1], MINOR)


def monthly_avg_sales(view: MetricView, ref: MetricRef) -> Ratio:
    """sales(N) / N."""
    w = view.window(_n(ref))
    return (w[0] - w[1], MINOR * _n(ref))


def gross_profit(view: MetricView, ref: MetricRef) -> Ratio:
    """Sum of gross_profit of sales in the window."""
    return (view.window(_n(ref))[2], MINOR)


def margin(view: MetricView, ref: MetricRef) -> Ratio | None:
    """gross_profit(N) / sales(N); missing when sales <= 0 or no sale carried gross_profit."""
    w = view.window(_n(ref))
    net = w[0] - w[1]
    if net <= 0 or w[3] == 0:
        return None
    return (w[2], net)


def purchase_count(view: MetricView, ref: MetricRef) -> Ratio:
    """Number of sales in the window."""
    return (view.window(_n(ref))[4], 1)


def active_months(view: MetricView, ref: MetricRef) -> Ratio:
    """Months of the window with at least one sale."""
    return (view.window(_n(ref))[5], 1)


def avg_payment_days(view: MetricView, ref: MetricRef) -> Ratio | None:
    """Amount-weighted mean days to pay over the window's sales (cash sales: 0 days)."""
    w = view.window(_n(ref))
    if w[4] == 0:
        return None
    first, last, today = view.month - _n(ref) + 1, view.month, view.today
    weighted = 0
    for invoice in view.state.invoices.values():
        if invoice.first_ts is None:
            continue
        first_day, paid_day, months = invoice.local(view.tz)
        amount = 0
        for month, sold in months:
            if first <= month <= last:
                amount += sold
        if amount:
            days = (today if paid_day is None else paid_day) - first_day
            weighted += amount * max(0, days)
    return (weighted, w[0])


def payment_days_slope(view: MetricView, ref: MetricRef) -> Ratio:
    """How much avg_payment_days(N) grows each day while the window keeps its months.

    Only open invoices age: each adds its window amount over the window's sales
    per day (their days are never negative, as no sale is dated after as_of).
    """
    w = view.window(_n(ref))
    if w[4] == 0:
        return (0, 1)
    first, last = view.month - _n(ref) + 1, view.month
    growing = 0
    for invoice in view.state.invoices.values():
        if invoice.first_ts is None or invoice.paid_ts is not None:
            continue
        for month, sold in invoice.local(view.tz)[2]:
            if first <= month <= last:
                growing += sold
    return (growing, w[0])


def interactions(view: MetricView, ref: MetricRef) -> Ratio:
    """Interactions of one kind in the window."""
    assert ref.arg is not None
    counts = view.state.interactions.get(view.tz, {}).get(ref.arg, {})
    first = view.month - _n(ref) + 1
    return (sum(c for m, c in counts.items() if first <= m <= view.month), 1)


def sales_lifetime(view: MetricView, ref: MetricRef) -> Ratio:
    """All sales minus all refunds ever applied."""
    return (view.state.lifetime_sales, MINOR)


def tenure_days(view: MetricView, ref: MetricRef) -> Ratio | None:
    """Local days since the first activity event."""
    first = view.state.first_activity
    return None if first is None else (view.days_since(first), 1)


def days_since_last_sale(view: MetricView, ref: MetricRef) -> Ratio | None:
    """Local days since the last sale; missing if none."""
    last = view.state.last_sale
    return None if last is None else (view.days_since(last), 1)


def assessment(view: MetricView, ref: MetricRef) -> Ratio | None:
    """The latest score of one indicator; missing if none."""
    assert ref.arg is not None
    latest = view.state.assessments.get(ref.arg)
    return None if latest is None else (latest[2], latest[3])


# The key of each dependency kind (grader.core.metricref.DEPENDS_ON): it differs
# whenever what the metrics of that kind read may differ.
_DEPENDENCY_KEYS: dict[str, Callable[[MetricView], object]] = {
    # month buckets (their revision) in windows ending with the as_of month
    "buckets": lambda v: (v.month, v.state.buckets_rev),
    # avg_payment_days: the invoices, the window's sales, the as_of local day
    "invoices": lambda v: (v.today, v.state.buckets_rev, v.state.invoices_rev),
    "interactions": lambda v: (v.month, v.state.interactions_rev),
    "lifetime": lambda v: v.state.lifetime_sales,
    "first_activity": lambda v: (v.today, v.state.first_activity),
    "last_sale": lambda v: (v.today, v.state.last_sale),
    "assessments": lambda v: v.state.assessments_rev,
}

_FUNCTIONS: dict[str, Callable[[MetricView, MetricRef], Ratio | None]] = {
    "sales": sales,
    "monthly_avg_sales": monthly_avg_sales,
    "gross_profit": gross_profit,
    "margin": margin,
    "purchase_count": purchase_count,
    "active_months": active_months,
    "avg_payment_days": avg_payment_days,
    "interactions": interactions,
    "sales_lifetime": sales_lifetime,
    "tenure_days": tenure_days,
    "days_since_last_sale": days_since_last_sale,
    "assessment": assessment,
}
