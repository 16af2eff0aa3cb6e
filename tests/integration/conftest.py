"""Shared fixtures for the integration tests: a real tansu broker, a real Redis,
real `grader worker` processes. Nothing is mocked; a service that cannot
start raises, so the tests error loudly instead of skipping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from grader.devtools.kafkabroker import KafkaBroker, kafka_available, start_kafka
from grader.devtools.services import Broker, RedisServer, free_port, start_broker, start_redis
from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parents[2]


Server = Broker | KafkaBroker
BROKERS = ("tansu", "kafka")


@pytest.fixture(scope="session", params=BROKERS, ids=[f"on_{b}" for b in BROKERS])
def broker(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Each broker for the session in turn (tansu, then Apache Kafka); tests isolate
    themselves by topic prefix. Where Kafka cannot run (no Java), its half is skipped
    with the reason, except in CI (`CI` set), where that fails the run."""
    if request.param == "tansu":
        with start_broker() as running:
            yield running
        return
    why = kafka_available()
    if why is not None:
        if in_ci():
            pytest.fail(f"Apache Kafka is needed in CI: {why}")
        pytest.skip(f"Apache Kafka cannot run here: {why}")
    with start_kafka() as running:
        yield running


def quirks(broker: Server) -> str:
    """GRADER_BROKER_QUIRKS for ``broker``: tansu's workarounds on tansu only."""
    return "none" if isinstance(broker, KafkaBroker) else "tansu"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session."""
    with start_redis() as running:
        yield running


def worker_env(broker: Server, prefix: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a grader process talking to ``broker`` under ``prefix``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    env.update(
        {
            "GRADER_KAFKA_URL": broker.url,
            "GRADER_TOPIC_PREFIX": prefix,
            "GRADER_PARTITIONS": "4",
            "GRADER_POLICIES": "abc-100,stars",
            "GRADER_CONFIG_DIR": str(ROOT / "config"),
            "GRADER_DATA_DIR": str(data_dir),
            "GRADER_WEB_PORT": str(free_port()),
            "GRADER_BROKER_QUIRKS": quirks(broker),
            "GRADER_LIVE_TICKS": "0",
            "GRADER_REDIS_URL": "",  # no support queues, unless the test gives a Redis
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A `grader worker` child process; its output goes to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, command: list[str] | None = None,
                 cwd: Path = ROOT) -> None:
        """``command``: this checkout's `grader worker` unless another is given (an installed
        copy's, tests/integration/test_installed.py)."""
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                command or [sys.executable, "-m", "grader", "worker"],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the worker logs that it is ready (recovery done, partitions assigned)."""
        deadline = time.monotonic() + timeout
        while "Worker ready" not in self.log():
            assert self.process.poll() is None, f"worker exited early:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{self.log()[-3000:]}"
            time.sleep(0.1)

    def stop(self, timeout: float = 5) -> int:
        """SIGTERM, and the exit code; a worker must be gone within ``timeout`` seconds
        (grader.stream.worker.SHUTDOWN_GRACE), else it is killed and the test fails."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"worker ignored SIGTERM:\n{self.log()[-3000:]}") from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL (kill -9): no shutdown, no commit, no flush."""
        self.process.kill()
        self.process.wait()


@pytest.fixture
def stream(broker: Server, tmp_path: Path) -> Iterator[Stream]:
    """A fresh topic prefix on the shared broker, and the processes started under it."""
    ctx = Stream(broker, tmp_path)
    yield ctx
    for worker in ctx.workers:
        if worker.process.poll() is None:
            worker.kill()


class Stream:
    """One test's topics and workers."""

    def __init__(self, broker: Server, tmp_path: Path) -> None:
        self.broker = broker
        self.tmp_path = tmp_path
        self.prefix = f"t{uuid.uuid4().hex[:8]}."
        self.workers: list[WorkerProcess] = []

    def env(self, data_dir: str = "data", **extra: str) -> dict[str, str]:
        return worker_env(self.broker, self.prefix, self.tmp_path / data_dir, **extra)

    def start_worker(self, data_dir: str = "data", **extra: str) -> WorkerProcess:
        name = f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.env(data_dir, **extra), self.tmp_path / name)
        self.workers.append(worker)
        return worker

    def grader(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """Run a `grader` subcommand to completion."""
        return subprocess.run(
            [sys.executable, "-m", "grader", *args],
            env=self.env(**extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def grader_process(self, *args: str, **extra: str) -> subprocess.Popen[bytes]:
        """Start a `grader` subcommand and return at once (its output is discarded)."""
        return subprocess.Popen([sys.executable, "-m", "grader", *args], env=self.env(**extra),
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def read(self, suffix: str) -> list[Any]:
        """Every record of ``prefix + suffix`` from the start (partition order kept)."""
        return read_topic(self.broker, self.prefix + suffix)


def read_topic(broker: Server, topic: str) -> list[Any]:
    """Every record of ``topic`` up to its end when the read starts (read_all)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    return read_all(consumer, topic)


def read_all(consumer: KafkaConsumer, topic: str, timeout: float = 30) -> list[Any]:
    """Every record of ``topic`` with ``consumer`` (closed afterwards), from the beginning
    up to each partition's end offset, fetched before the first record is read.

    Whatever was acknowledged before the call is in the result, however slow the
    broker; nothing is inferred from a quiet moment. tansu's ListOffsets can say
    less than the end (the last batch's base + 1, docs/tansu.md), but never 0 for
    a partition with records, so the read fetches that last batch, whose Fetch
    response carries the true high watermark, and goes on up to it.
    """
    try:
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not parts:
            return []
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends: dict[TopicPartition, int] = consumer.end_offsets(parts)
        records: list[Any] = []
        deadline = time.monotonic() + timeout

        def behind() -> list[TopicPartition]:
            return [tp for tp in parts
                    if consumer.position(tp) < max(ends[tp], consumer.highwater(tp) or 0)]

        while waiting := behind():
            assert time.monotonic() < deadline, f"{topic}: not read to its end: {waiting}"
            for batch in consumer.poll(timeout_ms=100).values():
                records += batch
        return records
    finally:
        consumer.close()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
