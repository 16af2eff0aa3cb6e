"""Start and stop a real Apache Kafka 4.x broker on loopback, for tests.

One JVM runs Kafka in KRaft combined mode (``process.roles=broker,controller``,
node 1, a single-node dynamic quorum) with its data in a temporary directory.
The jars come from Maven Central: ``deploy/kafka/pom.xml`` names them and
``scripts/fetch-kafka`` copies them into a cache folder outside git
(``$GRADER_KAFKA_JARS``, else ``~/.cache/grader/kafka-<version>``).

:func:`start_kafka` returns only once the broker answers Kafka ApiVersions
and its Metadata lists the broker; otherwise it stops the JVM and raises
:class:`~grader.devtools.services.ServiceError` with the tail of Kafka's log.
:func:`kafka_available` says, without starting anything, whether this
machine can run it.

Only a source checkout has ``deploy/`` and ``scripts/``: this module is for
tests and development, not for an installed grader.

Measured on the 2-core machine (Kafka 4.4.0, JDK 17.0.15, see docs/kafka.md):
first fetch 4.5 s with an empty Maven repository (1.7 s when ``~/.m2``
already has the jars, 0.04 s once cached), so a first ``start_kafka()`` takes
~5.7 s; later ones 2.2-2.7 s, median 2.4 s (storage format ~0.7 s, then the
broker; up to ~3.8 s with other tests on the CPU); ``stop()`` 0.2-0.6 s (a
controlled shutdown on SIGTERM). The JVM's RSS is ~280 MiB.

With a :class:`SaslSslListener`, the broker also listens for SASL_SSL
(SCRAM, TLS with a keystore the caller made) on a third loopback port; the
SCRAM users are created when the storage is formatted. Inter-broker and
controller traffic stays on the PLAINTEXT listeners.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grader.devtools.services import (
    HOST,
    KafkaProtocolServer,
    ServiceError,
    _kafka_answers,
    _start_failure,
    _usable_port,
    _wait_ready,
    free_port,
)

__all__ = [
    "JVM_OPTIONS",
    "KafkaBroker",
    "SaslSslListener",
    "kafka_available",
    "kafka_jars",
    "kafka_jars_dir",
    "kafka_version",
    "server_properties",
    "start_kafka",
]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
POM = ROOT / "deploy" / "kafka" / "pom.xml"
FETCH_SCRIPT = ROOT / "scripts" / "fetch-kafka"
#: Written by scripts/fetch-kafka after a complete copy; holds the pom's sha256.
STAMP = ".grader-fetched"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
FETCH_TIMEOUT = 900.0
NODE_ID = 1
#: Starts tried when a chosen port is taken before Kafka binds it.
BIND_TRIES = 3

#: A small JVM for a 2-core machine: 512 MiB heap at most, the serial
#: collector, the C1 compiler only (less CPU while starting), no hsperfdata file.
JVM_OPTIONS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

#: log4j2 configuration: everything to stdout (the log file), config dumps off.
LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
"""
#: A log4j line (the layout above) at level ERROR or FATAL.
_LOG_ERROR = re.compile(r"^\[[^]]*\] (ERROR|FATAL) ")


@dataclass(frozen=True)
class SaslSslListener:
    """A SASL_SSL listener to add: the server's TLS keystore and the SCRAM users.

    ``keystore`` is a PKCS12 file holding the server's key and certificate
    (for ``127.0.0.1``); ``users`` maps SCRAM user names to passwords, created
    at storage-format time (StorageTool ``--add-scram``). ``port`` defaults to
    a free port.
    """

    keystore: Path
    keystore_password: str = field(repr=False)
    users: Mapping[str, str] = field(repr=False)
    mechanism: str = "SCRAM-SHA-512"
    port: int | None = None


class KafkaBroker(KafkaProtocolServer):
    """A running Kafka broker+controller JVM; ``.bootstrap`` is for Kafka clients."""

    name = "kafka"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        port: int,
        workdir: Path,
        controller_port: int,
        sasl_ssl_port: int | None = None,
    ) -> None:
        super().__init__(process, port, workdir)
        self.controller_port = controller_port
        self.sasl_ssl_port = sasl_ssl_port

    @property
    def sasl_ssl_url(self) -> str:
        """The SASL_SSL listener as a ``kafka://host:port`` URL (only with a SaslSslListener)."""
        if self.sasl_ssl_port is None:
            raise ValueError("this broker has no SASL_SSL listener")
        return f"kafka://{self.host}:{self.sasl_ssl_port}"

    def output_tail(self, lines: int = 8) -> str:
        """Kafka's first ERROR line and its cause (the reason), then the last *lines* lines."""
        tail = super().output_tail(lines)
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return tail
        reason = [line for line in _log_reason(text) if line not in tail]
        return " | ".join([*reason, "...", tail]) if reason else tail

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (a controlled shutdown), SIGKILL after *timeout* s; remove the data.

        Safe to call more than once and on a broker that has already exited.
        """
        super().stop(timeout)


def kafka_version() -> str:
    """The Kafka version pinned in ``deploy/kafka/pom.xml`` (``<kafka.version>``)."""
    try:
        text = POM.read_text()
    except OSError as error:
        raise ServiceError(f"cannot read {POM}: {error.strerror}") from error
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", text)
    if not match:
        raise ServiceError(f"no <kafka.version> in {POM}")
    return match.group(1)


def kafka_jars_dir() -> Path:
    """The jar cache: ``$GRADER_KAFKA_JARS``, else ``~/.cache/grader/kafka-<version>``.

    ``$XDG_CACHE_HOME`` replaces ``~/.cache`` when set, as in scripts/fetch-kafka.
    """
    explicit = os.environ.get("GRADER_KAFKA_JARS")
    if explicit:
        return Path(explicit).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache, "grader", f"kafka-{kafka_version()}")


def _jars_fetched(jars: Path) -> bool:
    """True if scripts/fetch-kafka completed *jars* from the current pom."""
    try:
        stamp = (jars / STAMP).read_text().strip()
        return stamp == hashlib.sha256(POM.read_bytes()).hexdigest()
    except OSError:
        return False


def kafka_available() -> str | None:
    """None if Kafka can be started here, else a one-line reason why not.

    Needs ``java`` on PATH, and either the fetched jars or ``mvn`` to fetch them.
    Starts nothing and fetches nothing.
    """
    if shutil.which("java") is None:
        return "java not found on PATH: Kafka needs a JDK 17 or newer"
    if not POM.is_file():
        return f"{POM} not found: the Kafka jars cannot be fetched"
    jars = kafka_jars_dir()
    if _jars_fetched(jars):
        return None
    if shutil.which("mvn") is None:
        return f"mvn not found on PATH and no Kafka jars cached in {jars}"
    if not os.access(FETCH_SCRIPT, os.X_OK):
        return f"{FETCH_SCRIPT} not found or not executable"
    return None


def kafka_jars(timeout: float = FETCH_TIMEOUT) -> Path:
    """The folder of Kafka's jars, running scripts/fetch-kafka first if needed."""
    jars = kafka_jars_dir()
    if _jars_fetched(jars):
        return jars
    log.info("fetching the Kafka jars into %s (scripts/fetch-kafka)", jars)
    try:
        done = subprocess.run(
            [str(FETCH_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ServiceError(f"cannot fetch the Kafka jars with {FETCH_SCRIPT}: {error}") from error
    if done.returncode != 0 or not _jars_fetched(jars):
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ServiceError(f"cannot fetch the Kafka jars: {why}")
    return jars


def start_kafka(
    port: int | None = None,
    *,
    timeout: float = START_TIMEOUT,
    properties: Mapping[str, str] | None = None,
    sasl_ssl: SaslSslListener | None = None,
) -> KafkaBroker:
    """Start Kafka on ``127.0.0.1:port`` and wait until it serves Metadata.

    *port* defaults to a free port; the controller listens on another free
    port (``.controller_port``). *properties* are added to, or replace, the
    broker's ``server.properties`` (see :func:`server_properties`), e.g. to
    add a listener. *sasl_ssl* adds a SASL_SSL listener
    (``.sasl_ssl_port``, ``.sasl_ssl_url``) and its SCRAM users. Topics and
    offsets live in a temporary directory that ``stop()`` removes. A failed
    start stops the JVM and raises ServiceError; one that lost a port to
    another process (between choosing the port and Kafka binding it) is
    retried, up to 3 tries.
    """
    jars, java = kafka_jars(), _find_java()
    for attempt in range(1, BIND_TRIES + 1):
        try:
            return _start_once(java, jars, port, timeout, properties, sasl_ssl)
        except ServiceError as error:
            if attempt == BIND_TRIES or "Address already in use" not in str(error):
                raise
            log.warning("kafka lost a port while starting; trying again: %s", error)
    raise AssertionError("unreachable")


def _start_once(
    java: Path,
    jars: Path,
    port: int | None,
    timeout: float,
    extra: Mapping[str, str] | None,
    sasl_ssl: SaslSslListener | None,
) -> KafkaBroker:
    """One try of :func:`start_kafka`: format, launch, wait for Metadata."""
    started = time.monotonic()
    port = _usable_port(port)
    controller_port = _other_free_port(port)
    props = dict(extra or {})
    format_args: list[str] = []
    sasl_port = None
    if sasl_ssl is not None:
        sasl_port = _usable_port(sasl_ssl.port)
        while sasl_ssl.port is None and sasl_port in (port, controller_port):
            sasl_port = free_port()
        props = {**sasl_ssl_properties(sasl_ssl, port, controller_port, sasl_port), **props}
        format_args = scram_format_args(sasl_ssl)
    broker = _spawn_kafka(java, jars, port, controller_port, props, timeout, format_args)
    broker.sasl_ssl_port = sasl_port
    try:
        remaining = max(timeout - (time.monotonic() - started), 1.0)
        _wait_ready(broker, _kafka_answers, "Kafka ApiVersions", remaining)
        _wait_metadata(broker, started + timeout)
    except BaseException:
        broker.stop()
        raise
    elapsed = time.monotonic() - started
    log.info("kafka %s serving on %s after %.2fs", kafka_version(), broker.bootstrap, elapsed)
    return broker


def _spawn_kafka(
    java: Path,
    jars: Path,
    port: int,
    controller_port: int,
    extra: Mapping[str, str] | None,
    timeout: float,
    format_args: list[str] | None = None,
) -> KafkaBroker:
    """Format a new data dir in a temporary work dir and start the JVM there."""
    workdir = Path(tempfile.mkdtemp(prefix="grader-kafka-"))
    try:
        props = server_properties(port, controller_port, workdir / "data", extra)
        _write_config(workdir, props)
        _format_storage(java, jars, workdir, timeout, format_args or [])
        process = _launch(java, jars, workdir, [str(workdir / "server.properties")])
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return KafkaBroker(process, port, workdir, controller_port)


def server_properties(
    port: int, controller_port: int, data: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``server.properties`` of a single-node KRaft broker+controller on loopback."""
    props = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.bootstrap.servers": f"{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    props.update(extra or {})
    return props


def sasl_ssl_properties(
    listener: SaslSslListener, port: int, controller_port: int, sasl_port: int
) -> dict[str, str]:
    """The ``server.properties`` entries that add *listener* on *sasl_port*.

    Inter-broker and controller traffic stays on the PLAINTEXT listeners.
    """
    listeners = (
        f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port},"
        f"SASL_SSL://{HOST}:{sasl_port}"
    )
    mechanism = listener.mechanism.lower()
    return {
        "listeners": listeners,
        "advertised.listeners": listeners,
        "listener.security.protocol.map": (
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL"
        ),
        "sasl.enabled.mechanisms": listener.mechanism,
        f"listener.name.sasl_ssl.{mechanism}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(listener.keystore),
        "ssl.keystore.password": listener.keystore_password,
        "ssl.key.password": listener.keystore_password,
    }


def scram_format_args(listener: SaslSslListener) -> list[str]:
    """StorageTool ``format`` arguments that create *listener*'s SCRAM users."""
    args = []
    for name, password in listener.users.items():
        args += ["--add-scram", f"{listener.mechanism}=[name={name},password={password}]"]
    return args


def _log_reason(text: str) -> list[str]:
    """The first ERROR/FATAL line of a Kafka log, and the first ``Caused by:`` after it."""
    lines = text.splitlines()
    first = next((n for n, line in enumerate(lines) if _LOG_ERROR.match(line)), None)
    if first is None:
        return []
    cause = next((ln for ln in lines[first + 1 :] if ln.startswith("Caused by:")), "")
    return [line.strip()[:400] for line in (lines[first], cause) if line]


def _find_java() -> Path:
    """``java`` on PATH, or ServiceError."""
    java = shutil.which("java")
    if java is None:
        raise ServiceError("java not found on PATH: Kafka needs a JDK 17 or newer")
    return Path(java)


def _other_free_port(taken: int) -> int:
    """A free loopback port other than *taken*."""
    while (port := free_port()) == taken:
        pass
    return port


def _write_config(workdir: Path, props: Mapping[str, str]) -> None:
    """Write ``server.properties`` and ``log4j2.properties`` into *workdir*."""
    lines = [f"{key}={value}" for key, value in props.items()]
    (workdir / "server.properties").write_text("\n".join(lines) + "\n")
    (workdir / "log4j2.properties").write_text(LOG4J2)


def _java_command(java: Path, jars: Path, workdir: Path, main: str) -> list[str]:
    """``java <options> -cp <jars>/* <main>`` with log4j2 reading *workdir*'s config."""
    logging_config = f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}"
    return [str(java), *JVM_OPTIONS, logging_config, "-cp", f"{jars}/*", main]


def new_cluster_id() -> str:
    """A random cluster id as Kafka's own ``Uuid.randomUuid()`` makes them: URL-safe base64
    of 16 random bytes that does not start with "-" (StorageTool would take an id like
    "-Xyz..." for an option, and fail: 1 start in 64 before this)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(
    java: Path, jars: Path, workdir: Path, timeout: float, extra_args: list[str]
) -> None:
    """Run Kafka's StorageTool: a new cluster id, this node as the only voter."""
    cluster_id = new_cluster_id()
    config = str(workdir / "server.properties")
    args = ["format", "--cluster-id", cluster_id, "--config", config, "--standalone"]
    args += extra_args
    command = [*_java_command(java, jars, workdir, "kafka.tools.StorageTool"), *args]
    log_path = workdir / "format.log"
    with log_path.open("wb") as out:
        try:
            done = subprocess.run(
                command,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise ServiceError(f"kafka storage format took over {timeout:g}s") from error
    if done.returncode != 0:
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
        raise ServiceError(f"kafka storage format failed ({done.returncode}): {tail}")


def _launch(java: Path, jars: Path, workdir: Path, args: list[str]) -> subprocess.Popen[bytes]:
    """Start ``kafka.Kafka`` in *workdir*, its output to ``kafka.log`` there.

    The JVM gets its own process group: a terminal's Ctrl-C reaches only the
    Python parent, which then stops Kafka after whatever depends on it.
    """
    command = [*_java_command(java, jars, workdir, "kafka.Kafka"), *args]
    log.debug("starting kafka: %s", " ".join(command))
    with (workdir / f"{KafkaBroker.name}.log").open("wb") as out:
        try:
            return subprocess.Popen(
                command,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        except OSError as error:
            raise ServiceError(f"cannot run {java}: {error}") from error


def _wait_metadata(broker: KafkaBroker, deadline: float) -> None:
    """Until a Metadata request lists this broker; else stop it and raise."""
    last = "no answer"
    while time.monotonic() < deadline:
        if not broker.running:
            code = broker.process.returncode
            raise _start_failure(broker, f"exited with code {code} while starting")
        last = _metadata_problem(broker.bootstrap)
        if not last:
            return
        time.sleep(0.1)
    raise _start_failure(broker, f"did not serve Metadata in time ({last})")


def _metadata_problem(bootstrap: str) -> str:
    """``""`` if Metadata from *bootstrap* lists broker NODE_ID, else what is wrong.

    A KRaft broker's Metadata answer lists the unfenced brokers only.
    """
    from grader.kafka.admin import run_blocking

    return run_blocking(_metadata_answer(bootstrap))


async def _metadata_answer(bootstrap: str) -> str:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="grader-kafkabroker",
                                request_timeout_ms=5_000)
    try:
        try:
            await admin.start()
        except KafkaError as error:
            return f"admin client: {error!r}"
        try:
            brokers = (await admin.describe_cluster())["brokers"]
        except KafkaError as error:
            return f"metadata: {error!r}"
    finally:
        await admin.close()
    if any(b["node_id"] == NODE_ID for b in brokers):
        return ""
    return f"node {NODE_ID} not among the unfenced brokers {brokers}"
