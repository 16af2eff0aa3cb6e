"""Kafka security settings, and what each Kafka client of grader is given for them.

One place turns the validated settings (``kafka_security_protocol``,
``kafka_sasl_mechanism``, ``kafka_username``, ``GRADER_KAFKA_PASSWORD``,
``kafka_ca_file``, ``kafka_cert_file``, ``kafka_key_file``,
``kafka_ssl_check_hostname``; docs/streaming.md, "Kafka security") into the
keyword arguments of grader's Kafka clients, all aiokafka's: grader's own
(the admin client, `grader produce` and `grader tick`, the policies topic, the
worker's output sender, the changelog reader and the reachability check:
:func:`client_auth`), and Faust's (the worker's consumer and producer, through
``broker_credentials``: :func:`faust_credentials`). Every client gets the
same :class:`ssl.SSLContext`, built once by :func:`ssl_context`.

Apart from :func:`ssl_context`, which reads the certificate files, the
functions here are pure. Nothing here imports a Kafka client at import time.

The password is kept in a :class:`Secret` (its repr and str are ``***``) and
handed to the clients as a string whose repr, str and format are ``***`` too,
so that a client logging its configuration at debug level prints no
password. It is never part of an error message.
"""

from __future__ import annotations

import errno
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
MASK = "***"
# OpenSSL verify codes that mean "the certificate does not name the host we connected to"
_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
# TLS alerts a server sends when it wants a (valid) client certificate
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                       "CERTIFICATE_UNKNOWN")


class Secret:
    """A value that must not be shown: its repr and str are ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value itself, for the one place that needs it (a client's keyword argument)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _Masked(str):
    """A str whose repr, str and format are ``***``; its characters are the real value.

    Clients encode and join it (``.encode()``, ``"\\0".join``), which use the
    characters; a client that logs its configuration shows ``***``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return MASK

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK


@dataclass(frozen=True)
class KafkaSecurity:
    """How grader authenticates to Kafka and checks the broker (validated settings)."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @property
    def uses_tls(self) -> bool:
        """Whether connections are TLS (``SSL``, ``SASL_SSL``)."""
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        """Whether connections authenticate with SASL (``SASL_PLAINTEXT``, ``SASL_SSL``)."""
        return self.protocol.startswith("SASL_")

    def describe(self) -> str:
        """A short description for a log line, without the password."""
        if not self.uses_sasl:
            return self.protocol
        return f"{self.protocol}, {self.sasl_mechanism} as {self.username!r}"


PLAINTEXT = KafkaSecurity()


@dataclass(frozen=True)
class KafkaTarget:
    """A Kafka cluster to connect to: the ``kafka_url`` setting and the security settings."""

    url: str
    security: KafkaSecurity = PLAINTEXT

    @property
    def servers(self) -> list[str]:
        """The bootstrap servers, ``host:port`` each."""
        return bootstrap_servers(self.url)


def target_of(kafka: str | KafkaTarget) -> KafkaTarget:
    """``kafka`` as a KafkaTarget; a bare URL means PLAINTEXT (a local broker)."""
    return kafka if isinstance(kafka, KafkaTarget) else KafkaTarget(kafka)


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


def masked_password(security: KafkaSecurity) -> str | None:
    """The password as a client keyword argument: the real characters, shown as ``***``."""
    return None if security.password is None else _Masked(security.password.reveal())


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """The TLS context every client uses (None without TLS); reads the certificate files.

    The broker's certificate must chain to ``kafka_ca_file`` (else the
    system's CAs) and, unless ``kafka_ssl_check_hostname`` is off, name the
    host of ``kafka_url``. ``kafka_cert_file`` (with ``kafka_key_file``, or a
    key inside the certificate file) is the client certificate. Raises
    ValueError, one line naming the setting whose file cannot be used.
    """
    if not security.uses_tls:
        return None
    from aiokafka.helpers import create_ssl_context

    try:
        context: ssl.SSLContext = create_ssl_context(cafile=security.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(_file_problem("kafka_ca_file", security.ca_file, exc)) from None
    if security.cert_file is not None:
        try:
            context.load_cert_chain(security.cert_file, security.key_file)
        except (OSError, ssl.SSLError) as exc:
            key = "kafka_key_file" if security.key_file and "KEY" in str(exc).upper() else (
                "kafka_cert_file")
            path = security.key_file if key == "kafka_key_file" else security.cert_file
            raise ValueError(_file_problem(key, path, exc)) from None
    context.check_hostname = security.check_hostname
    return context


def _file_problem(key: str, path: Path | None, exc: BaseException) -> str:
    """``setting KEY (GRADER_KEY): PATH: why`` for a file that is not a usable certificate."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, ssl.SSLError):
        reason = f"not a usable PEM file ({exc.reason or reason})"
    return f"setting {key} (GRADER_{key.upper()}): {path}: {reason}"


def client_auth(security: KafkaSecurity, context: ssl.SSLContext | None) -> dict[str, Any]:
    """Keyword arguments for grader's aiokafka clients: AIOKafkaAdminClient,
    AIOKafkaProducer, AIOKafkaConsumer and ``aiokafka.conn.create_conn``.
    """
    kwargs: dict[str, Any] = {"security_protocol": security.protocol}
    if security.uses_tls:
        kwargs["ssl_context"] = context
    if security.uses_sasl:
        kwargs.update(sasl_mechanism=security.sasl_mechanism,
                      sasl_plain_username=security.username,
                      sasl_plain_password=masked_password(security))
    return kwargs


def faust_credentials(security: KafkaSecurity, context: ssl.SSLContext | None) -> Any:
    """Faust's ``broker_credentials``: None, SSLCredentials or SASLCredentials.

    Faust hands them to its aiokafka consumer and producer
    (``credentials_to_aiokafka_auth``): SASLCredentials with an ssl_context
    means SASL_SSL, without one SASL_PLAINTEXT.
    """
    if security.protocol == "PLAINTEXT":
        return None
    import faust

    if security.protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=security.username,
                                 password=masked_password(security),
                                 mechanism=security.sasl_mechanism,
                                 ssl_context=context if security.uses_tls else None)


def connect_failure(exc: BaseException, server: str, security: KafkaSecurity,
                    timeout: float) -> str:
    """One line saying why connecting to ``server`` failed, naming the setting to check.

    ``exc`` is what a connection attempt raised (aiokafka's ``create_conn``
    or a timeout after ``timeout`` seconds). The line never holds the password.
    """
    name = type(exc).__name__
    if "SaslAuthentication" in name or "AuthenticationFailed" in name:
        return (f"Kafka at {server} refused the password of user {security.username!r} "
                f"({security.sasl_mechanism}): check GRADER_KAFKA_PASSWORD and "
                f"GRADER_KAFKA_USERNAME ({_detail(exc)})")
    if "UnsupportedSaslMechanism" in name:
        return (f"Kafka at {server} does not accept SASL mechanism {security.sasl_mechanism} "
                f"(GRADER_KAFKA_SASL_MECHANISM)")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _certificate_failure(exc, server, security)
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or _first_line(exc)
        if any(alert in str(reason).upper() for alert in _CLIENT_CERT_ALERTS):
            return (f"Kafka at {server} refused the client certificate (GRADER_KAFKA_CERT_FILE="
                    f"{security.cert_file or 'none'}, GRADER_KAFKA_KEY_FILE): {reason}")
        return (f"TLS with Kafka at {server} failed ({reason}): is that listener "
                f"{security.protocol} (GRADER_KAFKA_SECURITY_PROTOCOL)?")
    if isinstance(exc, TimeoutError):
        return f"cannot reach Kafka at {server} (GRADER_KAFKA_URL): no answer within {timeout:g} s"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)) or (
            "closed" in str(exc).lower() and not isinstance(exc, OSError)):
        return (f"Kafka at {server} closed the connection: is that listener "
                f"{security.protocol} (GRADER_KAFKA_SECURITY_PROTOCOL)?")
    return f"cannot reach Kafka at {server} (GRADER_KAFKA_URL): {_os_reason(exc)}"


def _certificate_failure(exc: ssl.SSLCertVerificationError, server: str,
                         security: KafkaSecurity) -> str:
    reason = exc.verify_message or _first_line(exc)
    if exc.verify_code in _NAME_MISMATCH:
        host = server.rsplit(":", 1)[0]
        return (f"the certificate of Kafka at {server} is not for {host} ({reason}): connect by a "
                f"name it holds (GRADER_KAFKA_URL), or turn the check off with "
                f"GRADER_KAFKA_SSL_CHECK_HOSTNAME=false")
    cas = f"GRADER_KAFKA_CA_FILE={security.ca_file}" if security.ca_file else (
        "the system CAs; set GRADER_KAFKA_CA_FILE to the CA that signed it")
    return f"cannot verify the certificate of Kafka at {server} with {cas} ({reason})"


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno)  # "Connection refused", not aiokafka's wording
    return _first_line(exc)


def _detail(exc: BaseException) -> str:
    """The broker's message, without the client's "[Error 58] Name:" prefix."""
    message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    return message.strip().splitlines()[0] if message.strip() else _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
