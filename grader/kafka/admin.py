"""Reaching the broker, creating and checking the topics (kafka-python admin client),
before Faust starts.

Every function takes the cluster as a :class:`~grader.kafka.auth.KafkaTarget`
(``settings.kafka``: the URL and the security settings); a bare URL means a
PLAINTEXT broker (the local one of `grader dev`, the benchmarks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from grader.core.errors import GraderError
from grader.core.topology import TopicSpec
from grader.kafka import auth as kafkaauth
from grader.kafka.auth import KafkaTarget, bootstrap_servers, target_of

__all__ = ["KafkaError", "admin_client", "bootstrap_servers", "connected", "described_topics",
           "ensure_topics", "kafka_module", "partition_counts", "reach_kafka", "topic_ids"]

log = logging.getLogger(__name__)
REACH_TIMEOUT = 10.0  # seconds for a broker to accept a connection and authenticate it
CLIENT_TIMEOUT_MS = 10_000  # kafka-python's request and bootstrap timeouts (its default: 30 s)


class KafkaError(GraderError):
    """The broker cannot be reached or refuses what grader needs."""


def reach_kafka(kafka: str | KafkaTarget, timeout: float = REACH_TIMEOUT) -> None:
    """Connect (TLS, ApiVersions, SASL, Metadata) to each bootstrap server at once, and
    return when one of them answers; else raise KafkaError with one line naming the setting
    to check.

    kafka-python only says "Unable to bootstrap" after its 30 s bootstrap timeout,
    whatever went wrong; aiokafka's ``create_conn`` raises the cause at once.
    """
    target = target_of(kafka)
    try:
        context = kafkaauth.ssl_context(target.security)
    except ValueError as exc:
        raise KafkaError(str(exc)) from None
    loop = asyncio.new_event_loop()  # its own loop: the worker's are made later, by Faust
    try:
        failures = loop.run_until_complete(_reach_all(target, context, timeout))
    finally:
        loop.close()
    if failures:
        server, failure = _most_telling(failures)
        raise KafkaError(kafkaauth.connect_failure(failure, server, target.security, timeout))


async def _reach_all(target: KafkaTarget, context: Any,
                     timeout: float) -> list[tuple[str, BaseException]]:
    """The failures of connecting to each server (empty when one succeeded)."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    auth = kafkaauth.client_auth(target.security, context)

    async def connect(server: str) -> None:
        host, _, port = server.rpartition(":")
        conn = await create_conn(host.strip("[]"), int(port), client_id="grader-check",
                                 request_timeout_ms=int(timeout * 1000), **auth)
        try:  # ApiVersions needs no authentication; Metadata does (as the clients' bootstrap)
            await conn.send(MetadataRequest([]))
        finally:
            conn.close()
            await asyncio.sleep(0)  # lets the transport close before the loop does

    async def reach(server: str) -> None:
        await asyncio.wait_for(connect(server), timeout)

    results = await asyncio.gather(*(reach(s) for s in target.servers), return_exceptions=True)
    failures = [(s, r) for s, r in zip(target.servers, results, strict=True) if r is not None]
    return [] if len(failures) < len(results) else failures


def _most_telling(failures: list[tuple[str, BaseException]]) -> tuple[str, BaseException]:
    """A refusal (password, certificate) says more than a server that is down."""
    refusals = [(server, exc) for server, exc in failures if not _unreachable(exc)]
    return (refusals or failures)[0]


def _unreachable(exc: BaseException) -> bool:
    """Nothing answered: refused, timed out, unknown host (not a TLS or SASL refusal)."""
    return isinstance(exc, OSError) and not isinstance(exc, (ssl.SSLError, ConnectionResetError))


def kafka_module() -> Any:
    """kafka-python, imported without its import-time DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import kafka
        import kafka.admin
        import kafka.errors
    return kafka


def admin_client(kafka: str | KafkaTarget) -> Any:
    """A connected KafkaAdminClient, or KafkaError naming the URL."""
    target = target_of(kafka)
    module = kafka_module()
    auth = kafkaauth.client_auth(target.security, kafkaauth.ssl_context(target.security))
    try:
        return module.KafkaAdminClient(bootstrap_servers=target.servers, client_id="grader-admin",
                                       request_timeout_ms=CLIENT_TIMEOUT_MS,
                                       bootstrap_timeout_ms=CLIENT_TIMEOUT_MS, **auth)
    except module.errors.KafkaError as exc:
        raise KafkaError(f"cannot reach Kafka at {target.url} (GRADER_KAFKA_URL): {exc}") from None


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
def connected(kafka: str | KafkaTarget) -> Iterator[Any]:
    """A connected admin client, closed afterwards; a Kafka error becomes a KafkaError."""
    module = kafka_module()
    admin = admin_client(kafka)
    try:
        yield admin
    except module.errors.KafkaError as exc:
        raise KafkaError(f"Kafka at {target_of(kafka).url}: {exc}") from None
    finally:
        admin.close()


def topic_ids(kafka: str | KafkaTarget, names: Iterable[str]) -> dict[str, str]:
    """The topic id (a UUID the broker gives each topic it creates) of each existing topic
    among ``names``; a topic deleted and created again gets a new one."""
    with connected(kafka) as admin:
        return {name: str(t.get("topic_id"))
                for name, t in described_topics(admin, names).items()}


def ensure_topics(kafka: str | KafkaTarget, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the missing topics; refuse topics with another partition count.

    Returns the names created.
    """
    module = kafka_module()
    specs = list(specs)
    with connected(kafka) as admin:
        counts = partition_counts(admin, (s.name for s in specs))
        for spec in specs:
            if spec.name in counts and counts[spec.name] != spec.partitions:
                raise KafkaError(f"topic {spec.name} has {counts[spec.name]} partitions, the "
                                 f"partitions setting (GRADER_PARTITIONS) says {spec.partitions}")
        missing = [s for s in specs if s.name not in counts]
        new = [module.admin.NewTopic(s.name, s.partitions, 1, topic_configs=s.config)
               for s in missing]
        if new:
            with contextlib.suppress(module.errors.TopicAlreadyExistsError):
                admin.create_topics(new)  # raises if another process created one first
        for spec in missing:
            log.info("created topic %s (%d partitions, %s)", spec.name, spec.partitions,
                     spec.cleanup_policy)
        return [s.name for s in missing]
