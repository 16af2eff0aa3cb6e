"""Creating and checking the topics (kafka-python admin client), before Faust starts."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from grader.errors import GraderError
from grader.stream.topology import TopicSpec

log = logging.getLogger(__name__)


class KafkaError(GraderError):
    """The broker cannot be reached or refuses what grader needs."""


def bootstrap_servers(kafka_url: str) -> list[str]:
    """``kafka://h1:9092;h2:9092`` (Faust's form) -> ``["h1:9092", "h2:9092"]``."""
    servers = []
    for part in kafka_url.replace(",", ";").split(";"):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        if part:
            servers.append(part.rstrip("/") if ":" in part else f"{part.rstrip('/')}:9092")
    return servers


def kafka_module() -> Any:
    """kafka-python, imported without its import-time DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import kafka
        import kafka.admin
        import kafka.errors
    return kafka


def admin_client(kafka_url: str) -> Any:
    """A connected KafkaAdminClient, or KafkaError naming the URL."""
    kafka = kafka_module()
    try:
        return kafka.KafkaAdminClient(bootstrap_servers=bootstrap_servers(kafka_url),
                                      client_id="grader-admin", request_timeout_ms=10_000)
    except kafka.errors.KafkaError as exc:
        raise KafkaError(f"cannot reach Kafka at {kafka_url}: {exc}") from None


def described_topics(admin: Any, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The description (partitions, topic id, ...) of each existing topic among ``names``."""
    existing = set(names) & set(admin.list_topics())
    if not existing:
        return {}
    return {t["name"]: t for t in admin.describe_topics(sorted(existing)) if t["error_code"] == 0}


def partition_counts(admin: Any, names: Iterable[str]) -> dict[str, int]:
    """Partition count of each existing topic among ``names``."""
    return {name: len(t["partitions"]) for name, t in described_topics(admin, names).items()}


@contextlib.contextmanager
def connected(kafka_url: str) -> Iterator[Any]:
    """A connected admin client, closed afterwards; a Kafka error becomes a KafkaError."""
    kafka = kafka_module()
    admin = admin_client(kafka_url)
    try:
        yield admin
    except kafka.errors.KafkaError as exc:
        raise KafkaError(f"Kafka at {kafka_url}: {exc}") from None
    finally:
        admin.close()


def topic_ids(kafka_url: str, names: Iterable[str]) -> dict[str, str]:
    """The topic id (a UUID the broker gives each topic it creates) of each existing topic
    among ``names``; a topic deleted and created again gets a new one."""
    with connected(kafka_url) as admin:
        return {name: str(t.get("topic_id"))
                for name, t in described_topics(admin, names).items()}


def ensure_topics(kafka_url: str, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the missing topics; refuse topics with another partition count.

    Returns the names created.
    """
    kafka = kafka_module()
    specs = list(specs)
    with connected(kafka_url) as admin:
        counts = partition_counts(admin, (s.name for s in specs))
        for spec in specs:
            if spec.name in counts and counts[spec.name] != spec.partitions:
                raise KafkaError(f"topic {spec.name} has {counts[spec.name]} partitions, the "
                                 f"partitions setting (GRADER_PARTITIONS) says {spec.partitions}")
        missing = [s for s in specs if s.name not in counts]
        new = [kafka.admin.NewTopic(s.name, s.partitions, 1, topic_configs=s.config)
               for s in missing]
        if new:
            with contextlib.suppress(kafka.errors.TopicAlreadyExistsError):
                admin.create_topics(new)  # raises if another process created one first
        for spec in missing:
            log.info("created topic %s (%d partitions, %s)", spec.name, spec.partitions,
                     spec.cleanup_policy)
        return [s.name for s in missing]
