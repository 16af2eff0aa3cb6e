"""Reaching the broker, creating and checking the topics (aiokafka's admin client),
before Faust starts.

Every function takes the cluster as a :class:`~grader.kafka.auth.KafkaTarget`
(``settings.kafka``: the URL and the security settings); a bare URL means a
PLAINTEXT broker (the local one of `grader dev`, the benchmarks).

The clients are aiokafka's, so their calls are coroutines: the sync functions
(:func:`ensure_topics`, :func:`topic_ids`) run them with :func:`run_blocking`,
from the CLI, from the worker before Faust starts and from executor threads;
a coroutine uses :func:`connected` and :func:`described_topics` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from grader.core.errors import GraderError
from grader.core.topology import TopicSpec
from grader.kafka import auth as kafkaauth
from grader.kafka.auth import KafkaTarget, bootstrap_servers, target_of

__all__ = ["KafkaError", "admin_client", "bootstrap_servers", "connected", "described_topics",
           "ensure_topics", "partition_counts", "reach_kafka",
           "run_blocking", "topic_ids"]

log = logging.getLogger(__name__)
REACH_TIMEOUT = 10.0  # seconds for a broker to accept a connection and authenticate it
CLIENT_TIMEOUT_MS = 10_000  # the clients' request timeout (aiokafka's default: 40 s)


class KafkaError(GraderError):
    """The broker cannot be reached or refuses what grader needs."""


def reach_kafka(kafka: str | KafkaTarget, timeout: float = REACH_TIMEOUT) -> None:
    """Connect (TLS, ApiVersions, SASL, Metadata) to each bootstrap server at once, and
    return when one of them answers; else raise KafkaError with one line naming the setting
    to check.

    A client's bootstrap only says "Unable to bootstrap", whatever went wrong;
    aiokafka's ``create_conn`` raises the cause at once.
    """
    target = target_of(kafka)
    try:
        context = kafkaauth.ssl_context(target.security)
    except ValueError as exc:
        raise KafkaError(str(exc)) from None
    failures = run_blocking(_reach_all(target, context, timeout))
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


T = TypeVar("T")


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on an event loop of its own, for the sync callers of the
    functions here (the CLI, the worker before Faust starts, executor threads).

    The loop is not made the thread's current one (Faust makes the worker's
    later). In a thread whose loop is running this raises RuntimeError: a
    coroutine there awaits the async form (``connected``, ``described_topics``).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # none: the caller is sync code, as it should be
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            return runner.run(coro)
    coro.close()
    raise RuntimeError("run_blocking() cannot be called from a running event loop: "
                       "await the coroutine")


async def started(client: Any, target: KafkaTarget,
                  close: Callable[[], Awaitable[Any]] | None = None) -> Any:
    """``client`` (an aiokafka producer, consumer or admin client) started; if it cannot
    start, closed (``close``, else its ``stop``) and a KafkaError naming the URL."""
    from aiokafka.errors import KafkaError as ClientError

    try:
        await client.start()
    except (ClientError, OSError, TimeoutError) as exc:
        await (close or client.stop)()
        raise KafkaError(f"cannot reach Kafka at {target.url} (GRADER_KAFKA_URL): {exc}"
                         ) from None
    return client


async def admin_client(kafka: str | KafkaTarget) -> Any:
    """A started AIOKafkaAdminClient, or KafkaError naming the URL."""
    from aiokafka.admin import AIOKafkaAdminClient

    target = target_of(kafka)
    auth = kafkaauth.client_auth(target.security, kafkaauth.ssl_context(target.security))
    admin = AIOKafkaAdminClient(bootstrap_servers=target.servers, client_id="grader-admin",
                                request_timeout_ms=CLIENT_TIMEOUT_MS, **auth)
    return await started(admin, target, close=admin.close)


@contextlib.asynccontextmanager
async def connected(kafka: str | KafkaTarget) -> AsyncIterator[Any]:
    """A started admin client, closed afterwards; a Kafka error becomes a KafkaError."""
    from aiokafka.errors import KafkaError as ClientError

    admin = await admin_client(kafka)
    try:
        yield admin
    except (ClientError, TimeoutError) as exc:
        raise KafkaError(f"Kafka at {target_of(kafka).url}: {exc or type(exc).__name__}"
                         ) from None
    finally:
        await admin.close()


async def described_topics(admin: Any, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The description (``partitions``, each with its ``partition_index``; ``topic_id``) of
    each existing topic among ``names``: one Metadata request (v10 or later) for all topics.

    aiokafka's own ``describe_topics`` asks for Metadata v5 at most, which has no
    topic ids; the request goes through the admin client's private ``_send_request``
    (a random broker, as its ``describe_topics`` does).
    """
    from grader.kafka.metadata import TopicsMetadataRequest

    wanted = set(names)
    response = await admin._send_request(TopicsMetadataRequest())
    return {t["name"]: t for t in response.to_object()["topics"]
            if t["name"] in wanted and t["error_code"] == 0}


async def partition_counts(admin: Any, names: Iterable[str]) -> dict[str, int]:
    """Partition count of each existing topic among ``names``."""
    return {name: len(t["partitions"])
            for name, t in (await described_topics(admin, names)).items()}


def topic_ids(kafka: str | KafkaTarget, names: Iterable[str]) -> dict[str, str]:
    """The topic id (a UUID the broker gives each topic it creates) of each existing topic
    among ``names``; a topic deleted and created again gets a new one."""
    async def ids() -> dict[str, str]:
        async with connected(kafka) as admin:
            return {name: str(t["topic_id"])
                    for name, t in (await described_topics(admin, names)).items()}

    return run_blocking(ids())


def ensure_topics(kafka: str | KafkaTarget, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the missing topics; refuse topics with another partition count.

    Returns the names created.
    """
    return run_blocking(_ensure_topics(kafka, list(specs)))


async def _ensure_topics(kafka: str | KafkaTarget, specs: list[TopicSpec]) -> list[str]:
    from aiokafka.admin import NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    async with connected(kafka) as admin:
        counts = await partition_counts(admin, (s.name for s in specs))
        for spec in specs:
            if spec.name in counts and counts[spec.name] != spec.partitions:
                raise KafkaError(f"topic {spec.name} has {counts[spec.name]} partitions, the "
                                 f"partitions setting (GRADER_PARTITIONS) says {spec.partitions}")
        missing = [s for s in specs if s.name not in counts]
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.config) for s in missing]
        if new:
            response = await admin.create_topics(new, timeout_ms=CLIENT_TIMEOUT_MS)
            for topic, code, *message in response.topic_errors:
                # already there: another process created it since the counts were read
                if code not in (0, TopicAlreadyExistsError.errno):
                    detail = message[0] if message and message[0] else ""
                    raise for_code(code)(f"creating topic {topic}: {detail}".rstrip(": "))
        for spec in missing:
            log.info("created topic %s (%d partitions, %s)", spec.name, spec.partitions,
                     spec.cleanup_policy)
        return [s.name for s in missing]
