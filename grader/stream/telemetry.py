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

from grader.state import CustomerState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Tiers = tuple[tuple[str, str], ...]  # ((policy, tier), ...)


def tiers_of(state: CustomerState) -> Tiers:
    """The (policy, tier) pairs of a customer's state."""
    return tuple(sorted((policy, t.tier) for policy, t in state.tiers.items()))


class TierIndex:
    """Each customer's tiers on this worker's partitions, for ``grader_customers``.

    Kept up to date by the worker as it stores customers; a partition the
    worker gained is counted by reading every customer of it from the local
    store (``scan``) the first time it is asked for, and one it lost is
    dropped.
    """

    def __init__(self, scan: Callable[[int], Iterable[tuple[bytes, CustomerState]]]) -> None:
        self._scan = scan
        self._tiers: dict[bytes, tuple[int, Tiers]] = {}
        self._complete: set[int] = set()  # partitions read whole from the store

    def stored(self, key: bytes, partition: int, state: CustomerState) -> None:
        self._tiers[key] = (partition, tiers_of(state))

    def counts(self, owned: set[int]) -> dict[tuple[str, str], int]:
        """Customers per (policy, tier) on ``owned`` partitions."""
        self._complete &= owned
        for key in [k for k, (p, _t) in self._tiers.items() if p not in owned]:
            del self._tiers[key]
        for partition in sorted(owned - self._complete):
            for key, state in self._scan(partition):
                self._tiers[key] = (partition, tiers_of(state))
            self._complete.add(partition)
        counts: dict[tuple[str, str], int] = {}
        for _partition, tiers in self._tiers.values():
            for pair in tiers:
                counts[pair] = counts.get(pair, 0) + 1
        return counts


class _Live(Collector):
    """The gauges computed at each scrape: customers per tier, consumer lag."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[Any]:
        t = self._telemetry
        customers = GaugeMetricFamily("grader_customers",
                                      "Customers per tier on this worker's partitions",
                                      labels=["policy", "tier"])
        lag = GaugeMetricFamily("grader_consumer_lag",
                                "Records behind the end of each input partition",
                                labels=["topic", "partition"])
        if t.source is not None:
            owned, lags = t.source()
            if t.index is not None:
                for (policy, tier), n in sorted(t.index.counts(owned).items()):
                    customers.add_metric([policy, tier], n)
            for (topic, partition), behind in sorted(lags.items()):
                lag.add_metric([topic, str(partition)], behind)
        yield customers
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
