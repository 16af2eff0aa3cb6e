"""grader.kafka.auth: the security settings as each Kafka client's keyword arguments,
the one-line reasons for a failed connection, and the password kept out of sight."""

from __future__ import annotations

import inspect
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest

from grader.kafka.auth import (
    MASK,
    PLAINTEXT,
    KafkaSecurity,
    KafkaTarget,
    Secret,
    bootstrap_servers,
    client_auth,
    connect_failure,
    faust_credentials,
    masked_password,
    ssl_context,
    target_of,
)
from tests.pki import Pki, make_pki, openssl_or_skip

PASSWORD = "pa55-w0rd-never-shown"
SASL_SSL = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "grader", Secret(PASSWORD),
                         ca_file=Path("/etc/kafka/ca.pem"))
SASL_PLAINTEXT = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "grader", Secret(PASSWORD))
SSL_ONLY = KafkaSecurity("SSL")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    openssl_or_skip()
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_password_is_never_shown() -> None:
    secret = Secret(PASSWORD)
    assert secret.reveal() == PASSWORD
    shown = [repr(secret), str(secret), f"{secret}", repr(SASL_SSL), str(SASL_SSL),
             repr(KafkaTarget("kafka://h:9093", SASL_SSL)), SASL_SSL.describe()]
    assert not [text for text in shown if PASSWORD in text]


def test_a_client_sees_the_password_but_logs_only_stars(caplog: pytest.LogCaptureFixture) -> None:
    kwargs = client_auth(SASL_SSL, None)
    password = kwargs["sasl_plain_password"]
    # what the clients do with it (aiokafka's PLAIN and SCRAM)
    assert password.encode("utf-8") == PASSWORD.encode()
    assert "\0".join(["grader", "grader", password]) == f"grader\0grader\0{PASSWORD}"
    assert password == PASSWORD and len(password) == len(PASSWORD)
    # what a client logging its configuration would show
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("aiokafka.admin.client").debug("configuration: %s", kwargs)
        logging.getLogger("t").debug("%s %r %s", password, password, f"{password}")
    assert PASSWORD not in caplog.text and f"'sasl_plain_password': {MASK}" in caplog.text
    assert masked_password(PLAINTEXT) is None


CONTEXT = ssl.create_default_context()


@pytest.mark.parametrize(("security", "want"), [
    (PLAINTEXT, {"security_protocol": "PLAINTEXT"}),
    (SSL_ONLY, {"security_protocol": "SSL", "ssl_context": CONTEXT}),
    (SASL_PLAINTEXT, {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                      "sasl_plain_username": "grader", "sasl_plain_password": PASSWORD}),
    (SASL_SSL, {"security_protocol": "SASL_SSL", "ssl_context": CONTEXT,
                "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "grader",
                "sasl_plain_password": PASSWORD}),
], ids=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_client_keyword_arguments(security: KafkaSecurity, want: dict[str, Any]) -> None:
    got = client_auth(security, CONTEXT if security.uses_tls else None)
    assert got == want


def test_every_client_takes_these_keyword_arguments() -> None:
    """Each aiokafka client grader builds accepts them all (keyword arguments of the same
    names in each)."""
    import aiokafka
    import aiokafka.admin
    import aiokafka.conn

    names = set(client_auth(SASL_SSL, CONTEXT))
    for function in (aiokafka.admin.AIOKafkaAdminClient, aiokafka.AIOKafkaProducer,
                     aiokafka.AIOKafkaConsumer, aiokafka.conn.create_conn):
        assert names <= set(inspect.signature(function).parameters), function


@pytest.mark.parametrize("security", [PLAINTEXT, SSL_ONLY, SASL_PLAINTEXT, SASL_SSL],
                         ids=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_faust_gives_its_clients_what_the_others_get(security: KafkaSecurity) -> None:
    """Faust turns broker_credentials into aiokafka arguments (credentials_to_aiokafka_auth):
    the worker's consumer and Faust's producer get what grader's own clients get."""
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    context = CONTEXT if security.uses_tls else None
    credentials = faust_credentials(security, context)
    assert (credentials is None) == (security.protocol == "PLAINTEXT")
    from_faust = credentials_to_aiokafka_auth(credentials)
    assert {k: v for k, v in from_faust.items() if v is not None} == client_auth(security, context)
    assert PASSWORD not in repr(credentials)


def test_no_tls_context_without_tls() -> None:
    assert ssl_context(PLAINTEXT) is None and ssl_context(SASL_PLAINTEXT) is None


def test_tls_context_checks_the_broker(pki: Pki) -> None:
    context = ssl_context(KafkaSecurity("SSL", ca_file=pki.ca))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName",
                                                                 "grader test ca"),),)]
    relaxed = ssl_context(KafkaSecurity("SSL", ca_file=pki.ca, check_hostname=False))
    assert relaxed is not None
    assert relaxed.verify_mode == ssl.CERT_REQUIRED and not relaxed.check_hostname
    default = ssl_context(KafkaSecurity("SASL_SSL", "PLAIN", "u", Secret("p")))
    assert default is not None and default.verify_mode == ssl.CERT_REQUIRED


def test_tls_context_with_a_client_certificate(pki: Pki) -> None:
    security = KafkaSecurity("SSL", ca_file=pki.ca, cert_file=pki.client_cert,
                             key_file=pki.client_key)
    assert ssl_context(security) is not None
    wrong_key = KafkaSecurity("SSL", ca_file=pki.ca, cert_file=pki.client_cert,
                              key_file=pki.ca.with_suffix(".key"))
    with pytest.raises(ValueError, match=r"^setting kafka_key_file \(GRADER_KAFKA_KEY_FILE\)"):
        ssl_context(wrong_key)


@pytest.mark.parametrize(("field", "named"), [
    ("ca_file", "kafka_ca_file (GRADER_KAFKA_CA_FILE)"),
    ("cert_file", "kafka_cert_file (GRADER_KAFKA_CERT_FILE)"),
])
def test_a_file_that_is_no_certificate_is_named(tmp_path: Path, field: str, named: str) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError) as info:
        ssl_context(KafkaSecurity("SSL", **{field: junk}))  # type: ignore[arg-type]
    assert str(info.value).startswith(f"setting {named}: {junk}: ")
    assert "\n" not in str(info.value)


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                            f"verify failed: {message} (_ssl.c:1006)")
    error.verify_code, error.verify_message = code, message
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


def _sasl_failed() -> BaseException:
    from aiokafka.errors import SaslAuthenticationFailed

    return SaslAuthenticationFailed("Authentication failed during authentication due to "
                                    "invalid credentials with SASL mechanism SCRAM-SHA-512")


def _tls_alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:2580)")
    error.reason = reason
    return error


@pytest.mark.parametrize(("exc", "line"), [
    (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"),
     "cannot reach Kafka at 127.0.0.1:9093 (GRADER_KAFKA_URL): Connection refused"),
    (TimeoutError(),
     "cannot reach Kafka at 127.0.0.1:9093 (GRADER_KAFKA_URL): no answer within 10 s"),
    (_sasl_failed(),
     "Kafka at 127.0.0.1:9093 refused the password of user 'grader' (SCRAM-SHA-512): check "
     "GRADER_KAFKA_PASSWORD and GRADER_KAFKA_USERNAME (Authentication failed during "
     "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512)"),
    (_verify_error(19, "self-signed certificate in certificate chain"),
     "cannot verify the certificate of Kafka at 127.0.0.1:9093 with "
     "GRADER_KAFKA_CA_FILE=/etc/kafka/ca.pem (self-signed certificate in certificate chain)"),
    (_verify_error(64, "IP address mismatch, certificate is not valid for '127.0.0.1'."),
     "the certificate of Kafka at 127.0.0.1:9093 is not for 127.0.0.1 (IP address mismatch, "
     "certificate is not valid for '127.0.0.1'.): connect by a name it holds "
     "(GRADER_KAFKA_URL), or turn the check off with GRADER_KAFKA_SSL_CHECK_HOSTNAME=false"),
    (_tls_alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
     "Kafka at 127.0.0.1:9093 refused the client certificate (GRADER_KAFKA_CERT_FILE=none, "
     "GRADER_KAFKA_KEY_FILE): TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    (_tls_alert("WRONG_VERSION_NUMBER"),
     "TLS with Kafka at 127.0.0.1:9093 failed (WRONG_VERSION_NUMBER): is that listener "
     "SASL_SSL (GRADER_KAFKA_SECURITY_PROTOCOL)?"),
    (ConnectionResetError(),
     "Kafka at 127.0.0.1:9093 closed the connection: is that listener SASL_SSL "
     "(GRADER_KAFKA_SECURITY_PROTOCOL)?"),
], ids=["refused", "timeout", "password", "unknown-ca", "hostname", "client-cert", "not-tls",
        "reset"])
def test_a_failed_connection_is_one_line_naming_the_setting(exc: BaseException,
                                                            line: str) -> None:
    assert connect_failure(exc, "127.0.0.1:9093", SASL_SSL, 10.0) == line


def test_unsupported_mechanism_and_no_ca_file() -> None:
    from aiokafka.errors import UnsupportedSaslMechanismError

    assert connect_failure(UnsupportedSaslMechanismError(), "h:1", SASL_SSL, 10) == (
        "Kafka at h:1 does not accept SASL mechanism SCRAM-SHA-512 "
        "(GRADER_KAFKA_SASL_MECHANISM)")
    line = connect_failure(_verify_error(20, "unable to get local issuer certificate"), "h:1",
                           SSL_ONLY, 10)
    assert "system CAs; set GRADER_KAFKA_CA_FILE" in line


@pytest.mark.parametrize(("url", "servers"), [
    ("kafka://h1:9092", ["h1:9092"]),
    ("kafka://h1:9092;h2:9093", ["h1:9092", "h2:9093"]),
    ("kafka://h1,h2:9093/", ["h1:9092", "h2:9093"]),
    ("aiokafka://[::1]:9092", ["[::1]:9092"]),
])
def test_bootstrap_servers(url: str, servers: list[str]) -> None:
    assert bootstrap_servers(url) == servers
    assert KafkaTarget(url, SASL_SSL).servers == servers


def test_a_bare_url_is_a_plaintext_target() -> None:
    assert target_of("kafka://h:1") == KafkaTarget("kafka://h:1", PLAINTEXT)
    target = KafkaTarget("kafka://h:1", SASL_SSL)
    assert target_of(target) is target
