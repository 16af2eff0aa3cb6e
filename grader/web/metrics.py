"""The worker's Prometheus metrics, served at ``/metrics`` on its web port.

Names and labels (docs/metrics.md): no label carries a customer id or grows
with the number of customers; topics are named without the topic prefix.

- ``grader_events_total{topic, outcome}``: input messages by outcome
  (applied, duplicate, expired, rejected, forwarded);
- ``grader_rejections_total{code}``: dead-lettered messages by error code;
- ``grader_tier_changes_total{policy, direction}``;
- ``grader_customers{policy, tier}``: customers per tier on this worker's
  partitions, counted from the local store after a rebalance, so the sum
  over the workers is the population;
- ``grader_customers_at_risk{policy, tier}``: of those, the customers whose
  tier would drop (``drops_on``) within 30 days of their ``as_of``, by
  their current tier (as last stored);
- ``grader_event_to_tier_change_seconds``: from the message's timestamp to
  its tier changes' acknowledgement by Kafka;
- ``grader_batch_seconds``: grading one batch, stored and published;
- ``grader_consumer_lag{topic, partition}``: records behind the partition's
  end (the high watermark the consumer last saw, minus the next offset to
  commit);
- ``grader_rebalances_total``, ``grader_redis_errors_total``;
- ``grader_policy_regrades_total``, ``grader_policy_sweep_pending_partitions``: a
  roll-out's progress (docs/policies.md, "Roll-out");
- the process and Python collectors of prometheus-client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from grader.core.clock import local_day
from grader.core.state import CustomerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Tiers = tuple[tuple[str, str], ...]  # ((policy, tier), ...)
AT_RISK_DAYS = 30  # grader_customers_at_risk: a drop within this many days (GRADING.md)


def tiers_of(state: CustomerState) -> Tiers:
    """The (policy, tier) pairs of a customer's state."""
    return tuple(sorted((policy, t.tier) for policy, t in state.tiers.items()))


def at_risk_of(state: CustomerState, timezones: dict[str, str]) -> Tiers:
    """The (policy, tier) pairs of the customer's tiers that would drop within AT_RISK_DAYS
    local days of its as_of (``timezones``: policy -> its timezone, the active ones)."""
    pairs = []
    for policy, risk in state.risk.items():
        tz, tier = timezones.get(policy), state.tiers.get(policy)
        if risk.drops_on is not None and tz is not None and tier is not None \
                and risk.drops_on - local_day(state.as_of, tz) <= AT_RISK_DAYS:
            pairs.append((policy, tier.tier))
    return tuple(sorted(pairs))


class TierIndex:
    """Each customer's tiers on this worker's partitions, for ``grader_customers``.

    Kept up to date by the worker as it stores customers; a partition the
    worker gained is counted by reading every customer of it from the local
    store (``scan``) the first time it is asked for, and one it lost is
    dropped.
    """

    def __init__(self, scan: Callable[[int], Iterable[tuple[bytes, CustomerState]]],
                 timezones: dict[str, str] | None = None) -> None:
        self._scan = scan
        self._timezones = timezones or {}  # policy -> timezone, for at_risk_of
        # key -> (partition, its tiers, those at risk within AT_RISK_DAYS)
        self._tiers: dict[bytes, tuple[int, Tiers, Tiers]] = {}
        self._complete: set[int] = set()  # partitions read whole from the store

    def stored(self, key: bytes, partition: int, state: CustomerState) -> None:
        self._tiers[key] = (partition, tiers_of(state), at_risk_of(state, self._timezones))

    def counts(self, owned: set[int]) -> dict[tuple[str, str], int]:
        """Customers per (policy, tier) on ``owned`` partitions."""
        return self.both(owned)[0]

    def both(self, owned: set[int]) -> tuple[dict[tuple[str, str], int],
                                             dict[tuple[str, str], int]]:
        """Customers per (policy, tier) on ``owned`` partitions, and of those the ones
        at risk within AT_RISK_DAYS."""
        self._complete &= owned
        for key in [k for k, (p, _t, _r) in self._tiers.items() if p not in owned]:
            del self._tiers[key]
        for partition in sorted(owned - self._complete):
            for key, state in self._scan(partition):
                self.stored(key, partition, state)
            self._complete.add(partition)
        counts: dict[tuple[str, str], int] = {}
        at_risk: dict[tuple[str, str], int] = {}
        for _partition, tiers, risky in self._tiers.values():
            for pair in tiers:
                counts[pair] = counts.get(pair, 0) + 1
            for pair in risky:
                at_risk[pair] = at_risk.get(pair, 0) + 1
        return counts, at_risk


class _Live(Collector):
    """The gauges computed at each scrape: customers per tier, consumer lag."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Any]:
        t = self._telemetry
        customers = GaugeMetricFamily("grader_customers",
                                      "Customers per tier on this worker's partitions",
                                      labels=["policy", "tier"])
        at_risk = GaugeMetricFamily("grader_customers_at_risk",
                                    f"Customers whose tier would drop within {AT_RISK_DAYS} "
                                    "days of their as_of, per current tier, on this worker's "
                                    "partitions", labels=["policy", "tier"])
        lag = GaugeMetricFamily("grader_consumer_lag",
                                "Records behind the end of each input partition",
                                labels=["topic", "partition"])
        if t.source is not None:
            owned, lags = t.source()
            if t.index is not None:
                counts, risky = t.index.both(owned)
                for (policy, tier), n in sorted(counts.items()):
                    customers.add_metric([policy, tier], n)
                for (policy, tier), n in sorted(risky.items()):
                    at_risk.add_metric([policy, tier], n)
            for (topic, partition), behind in sorted(lags.items()):
                lag.add_metric([topic, str(partition)], behind)
        yield customers
        yield at_risk
        yield lag


class Telemetry:
    """The worker's metrics, in a registry of their own."""

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.events = Counter("grader_events", "Input messages by topic and outcome",
                              ["topic", "outcome"], registry=registry)
        self.rejections = Counter("grader_rejections", "Messages sent to dead letters, by code",
                                  ["code"], registry=registry)
        self.tier_changes = Counter("grader_tier_changes", "Tier changes published",
                                    ["policy", "direction"], registry=registry)
        self.latency = Histogram("grader_event_to_tier_change_seconds",
                                 "From an input message's timestamp to its tier changes' "
                                 "acknowledgement", buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("grader_batch_seconds",
                                       "Grading one batch, stored and published",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.rebalances = Counter("grader_rebalances", "Partition assignments received",
                                  registry=registry)
        self.redis_errors = Counter("grader_redis_errors",
                                    "Failed writes to Redis (retried while it is unavailable; "
                                    "a customer it refused is skipped)", registry=registry)
        self.policy_regrades = Counter("grader_policy_regrades",
                                       "Customers graded again after a policy roll-out",
                                       registry=registry)
        self.sweep_pending = Gauge("grader_policy_sweep_pending_partitions",
                                   "Owned partitions not yet checked for a policy roll-out",
                                   registry=registry)
        self.index: TierIndex | None = None
        # () -> (owned partitions, {(topic, partition): lag}); set by the app
        self.source: Callable[[], tuple[set[int], dict[tuple[str, int], int]]] | None = None
        registry.register(_Live(self))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


def install(app: Any, telemetry: Telemetry) -> None:
    """Serve ``telemetry`` at ``/metrics`` of Faust ``app``'s web server."""

    @app.page("/metrics")  # type: ignore[untyped-decorator]
    async def metrics(web: Any, _request: Any) -> Any:
        return web.bytes(telemetry.render(), headers={"Content-Type": CONTENT_TYPE})
