"""Kafka security (GRADING.md section 7) against a real Apache Kafka with a SASL_SSL listener.

The broker (grader.devtools.kafkabroker, ``SaslSslListener``) listens for SASL_SSL
with SCRAM-SHA-512, a user created when its storage is formatted, and a
server certificate for 127.0.0.1 signed by a CA this module makes with the
openssl CLI (tests/pki.py); inter-broker and controller traffic stay on
PLAINTEXT listeners that grader is never pointed at. Every grader command
connects over SASL_SSL; the test reads the outputs over SASL_SSL too.

A wrong password, a CA that did not sign the broker's certificate, a
broker that is not there and one that does not answer each end in one error
line naming the setting to check, within 15 s; the password is in no line
any command or worker writes.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from grader.devtools.kafkabroker import KafkaBroker, SaslSslListener, kafka_available, start_kafka
from grader.devtools.services import free_port
from tests.conftest import in_ci
from tests.integration.conftest import ROOT, Stream, read_all
from tests.integration.test_stream import AS_OF, events_file, expected, wait_applied, wait_for_tiers
from tests.pki import Pki, make_pki, openssl_or_skip

pytestmark = pytest.mark.integration

USER = "grader"
FAIL_WITHIN = 15.0  # seconds for a command to give up on a broker it cannot use


@dataclass(frozen=True)
class SecureKafka:
    """The broker, the certificates, and the SCRAM password of USER."""

    broker: KafkaBroker
    pki: Pki
    password: str

    def env(self) -> dict[str, str]:
        """The settings of a grader process that connects over SASL_SSL."""
        return {
            "GRADER_KAFKA_URL": self.broker.sasl_ssl_url,
            "GRADER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "GRADER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "GRADER_KAFKA_USERNAME": USER,
            "GRADER_KAFKA_PASSWORD": self.password,
            "GRADER_KAFKA_CA_FILE": str(self.pki.ca),
        }


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """Apache Kafka with a SASL_SSL listener; skipped (failed in CI) where Kafka cannot run."""
    why = kafka_available()
    if why is not None:
        if in_ci():
            pytest.fail(f"Apache Kafka is needed in CI: {why}")
        pytest.skip(f"Apache Kafka cannot run here: {why}")
    openssl_or_skip()
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    password = f"pw-{secrets.token_hex(12)}"
    listener = SaslSslListener(pki.server_keystore, pki.keystore_password, {USER: password})
    with start_kafka(sasl_ssl=listener) as broker:
        yield SecureKafka(broker, pki, password)


class SecureStream(Stream):
    """A test's topics and workers, every grader process and read over SASL_SSL."""

    def __init__(self, secure: SecureKafka, tmp_path: Path) -> None:
        super().__init__(secure.broker, tmp_path)
        self.secure = secure

    def env(self, data_dir: str = "data", **extra: str) -> dict[str, str]:
        return super().env(data_dir, **{**self.secure.env(), **extra})

    def read(self, suffix: str) -> list[Any]:
        return read_over_sasl_ssl(self.secure, self.prefix + suffix)


@pytest.fixture
def stream(secure: SecureKafka, tmp_path: Path) -> Iterator[SecureStream]:
    ctx = SecureStream(secure, tmp_path)
    yield ctx
    for worker in ctx.workers:
        if worker.process.poll() is None:
            worker.kill()


def read_over_sasl_ssl(secure: SecureKafka, topic: str) -> list[Any]:
    """Every record of ``topic``, read by a kafka-python consumer configured here by hand."""
    consumer = KafkaConsumer(
        bootstrap_servers=secure.broker.sasl_ssl_url.removeprefix("kafka://"),
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=USER, sasl_plain_password=secure.password,
        ssl_cafile=str(secure.pki.ca), enable_auto_commit=False)
    return read_all(consumer, topic)


def timed(stream: Stream, *args: str, **extra: str) -> tuple[Any, float]:
    """Run a `grader` subcommand of ``stream`` to completion; its result and how long it took."""
    return run_grader(stream.env(**extra), *args)


def assert_one_error_line(done: Any, elapsed: float, named: str) -> str:
    """Exit code not 0 within FAIL_WITHIN s; stderr: where it connects, then one error line."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stderr
    assert elapsed < FAIL_WITHIN, f"took {elapsed:.1f}s: {done.stderr}"
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith("grader: connecting to Kafka at "), done.stderr
    assert lines[1].startswith("grader: error: ") and named in lines[1], done.stderr
    print(f"\n{elapsed:.2f}s exit {done.returncode}: {lines[1]}")
    return lines[1]


def assert_no_password(text: str, *passwords: str) -> None:
    for password in passwords:
        assert password not in text, "a password was written out"


def test_the_worker_grades_over_sasl_ssl(stream: SecureStream, tmp_path: Path) -> None:
    """Faust's consumer and producer, grader's sender and grader's other aiokafka clients
    (topic admin, policies topic, produce, tick): all authenticated on the SASL_SSL listener;
    the result equals `grader replay`. The worker logs at debug level, with the password in
    no line."""
    lines = events_file(tmp_path / "events.jsonl", customers=8, events=60, seed=31)
    want, _dead = expected(lines)
    worker = stream.start_worker(GRADER_LOG_LEVEL="debug")
    worker.wait_ready(45)
    produced = stream.grader("produce", str(tmp_path / "events.jsonl"))
    assert produced.returncode == 0, produced.stderr
    assert produced.stderr.startswith(f"grader: connecting to Kafka at 127.0.0.1:"
                                      f"{stream.secure.broker.sasl_ssl_port} (SASL_SSL, "
                                      f"SCRAM-SHA-512 as 'grader') ...\n")
    assert "produced 60 lines" in produced.stderr
    wait_applied(stream, lines)
    ticked = stream.grader("tick", "--as-of", AS_OF)
    assert ticked.returncode == 0, ticked.stderr
    wait_for_tiers(stream, want)
    assert worker.stop() == 0
    log = worker.log()
    assert "Authenticated as grader via SCRAM-SHA-512" in log  # aiokafka: Faust and the sender
    for text in (log, produced.stdout + produced.stderr, ticked.stdout + ticked.stderr):
        assert_no_password(text, stream.secure.password)


@pytest.mark.parametrize("command", ["worker", "produce"])
def test_a_wrong_password_is_one_line(stream: SecureStream, tmp_path: Path,
                                      command: str) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    events = tmp_path / "events.jsonl"
    events.write_text("")
    args = ["produce", str(events)] if command == "produce" else [command]
    done, elapsed = timed(stream, *args, GRADER_KAFKA_PASSWORD=wrong)
    line = assert_one_error_line(done, elapsed, "GRADER_KAFKA_PASSWORD")
    assert "refused the password of user 'grader'" in line
    assert_no_password(done.stdout + done.stderr, stream.secure.password, wrong)


@pytest.mark.parametrize("command", ["worker", "produce"])
def test_an_unknown_ca_is_one_line(stream: SecureStream, tmp_path: Path, command: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("")
    args = ["produce", str(events)] if command == "produce" else [command]
    done, elapsed = timed(stream, *args, GRADER_KAFKA_CA_FILE=str(stream.secure.pki.other_ca))
    line = assert_one_error_line(done, elapsed, "GRADER_KAFKA_CA_FILE")
    assert "cannot verify the certificate" in line
    assert_no_password(done.stdout + done.stderr, stream.secure.password)


def nowhere_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a grader process pointed at a port nothing listens on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    env.update({"GRADER_KAFKA_URL": "kafka://127.0.0.1:1",
                "GRADER_CONFIG_DIR": str(ROOT / "config"), "GRADER_DATA_DIR": str(tmp_path),
                "GRADER_WEB_PORT": str(free_port()), "GRADER_LIVE_TICKS": "0",
                "PYTHONPATH": str(ROOT), **extra})
    return env


def run_grader(env: dict[str, str], *args: str) -> tuple[Any, float]:
    """Run a `grader` subcommand to completion; its result and how long it took."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "grader", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - started


@pytest.mark.parametrize("command", ["worker", "produce", "tick"])
def test_an_unreachable_broker_is_one_line(tmp_path: Path, command: str) -> None:
    """No broker is started: this runs where Kafka cannot."""
    events = tmp_path / "events.jsonl"
    events.write_text("")
    args = {"worker": ["worker"], "produce": ["produce", str(events)],
            "tick": ["tick", "--as-of", AS_OF]}[command]
    done, elapsed = run_grader(nowhere_env(tmp_path), *args)
    line = assert_one_error_line(done, elapsed, "GRADER_KAFKA_URL")
    assert line == ("grader: error: cannot reach Kafka at 127.0.0.1:1 (GRADER_KAFKA_URL): "
                    "Connection refused")
    assert done.stderr.startswith("grader: connecting to Kafka at 127.0.0.1:1 (PLAINTEXT) ...")


def test_an_unreachable_broker_with_sasl_ssl_settings(tmp_path: Path) -> None:
    openssl_or_skip()
    pki = make_pki(tmp_path / "pki")
    password = f"pw-{secrets.token_hex(12)}"
    env = nowhere_env(tmp_path, GRADER_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                      GRADER_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", GRADER_KAFKA_USERNAME=USER,
                      GRADER_KAFKA_PASSWORD=password, GRADER_KAFKA_CA_FILE=str(pki.ca))
    done, elapsed = run_grader(env, "worker")
    assert_one_error_line(done, elapsed, "GRADER_KAFKA_URL")
    assert_no_password(done.stdout + done.stderr, password)



def test_a_broker_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    """A port that accepts connections and never answers (a hung broker, a firewall that
    lets SYN through): the check gives up after 10 s instead of kafka-python's 30 s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        done, elapsed = run_grader(nowhere_env(tmp_path, GRADER_KAFKA_URL=f"kafka://127.0.0.1:"
                                                                          f"{port}"), "worker")
    line = assert_one_error_line(done, elapsed, "GRADER_KAFKA_URL")
    assert line.endswith("no answer within 10 s")
