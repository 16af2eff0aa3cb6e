"""The topics of grader, from the package's topics/topics.toml; names carry the topic prefix."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from grader.core.resources import packaged

TOPICS_DIR = packaged("topics")  # topics.toml and the input events' schemas/
INPUTS = ("transactions", "interactions", "overrides", "tickets")
TICKS = "ticks"
REPARTITION = "repartition"  # events that arrived on another partition than their customer's
TIER_CHANGES, CUSTOMER_TIERS, DEAD_LETTERS = "tier-changes", "customer-tiers", "dead-letters"
ACCESS_LOG = "access-log"  # one record per answer of the customer endpoint (grader/web/access.py)
TIER_WARNINGS = "tier-warnings"


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its suffix, full name, role, partition count and cleanup policy."""

    suffix: str
    name: str
    role: str  # "input" | "internal" | "control" | "output"
    partitions: int
    cleanup_policy: str  # "delete" | "compact"
    schemas: dict[str, str]  # event type -> schema file under TOPICS_DIR

    @property
    def config(self) -> dict[str, str]:
        """Topic configs to create it with."""
        return {"cleanup.policy": self.cleanup_policy}


def load_topics(prefix: str, partitions: int, path: Path | None = None) -> dict[str, TopicSpec]:
    """Every topic by suffix, with ``prefix`` and the ``partitions`` setting applied."""
    source = TOPICS_DIR / "topics.toml" if path is None else path
    doc = tomllib.loads(source.read_text(encoding="utf-8"))
    specs: dict[str, TopicSpec] = {}
    for suffix, raw in doc["topics"].items():
        count = partitions if raw["partitions"] == "setting" else int(raw["partitions"])
        specs[suffix] = TopicSpec(suffix, prefix + suffix, raw["role"], count,
                                  raw["cleanup_policy"], dict(raw.get("schemas", {})))
    return specs


def names(prefix: str, suffixes: tuple[str, ...]) -> tuple[str, ...]:
    """Full topic names of ``suffixes``."""
    return tuple(prefix + s for s in suffixes)


@lru_cache(maxsize=1 << 16)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner (murmur2) gives ``key``.

    Cached: the worker asks for a customer's partition for each of its
    messages and outputs, and murmur2 is pure Python.
    """
    from aiokafka.partitioner import murmur2

    return int(murmur2(key) & 0x7FFFFFFF) % partitions
