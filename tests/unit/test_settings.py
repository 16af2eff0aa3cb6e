"""Settings: config/grader.toml, overridden by GRADER_* (the environment wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader.errors import SettingsError
from grader.kafkaauth import PLAINTEXT, KafkaSecurity, KafkaTarget, Secret
from grader.settings import load_settings


def settings_in(tmp_path: Path, toml: str = "", **env: str):  # type: ignore[no-untyped-def]
    (tmp_path / "grader.toml").write_text(toml)
    return load_settings({"GRADER_CONFIG_DIR": str(tmp_path), **env})


def test_defaults(tmp_path: Path) -> None:
    s = settings_in(tmp_path)
    assert (s.kafka_url, s.redis_url) == ("kafka://127.0.0.1:9092", "redis://127.0.0.1:6379/0")
    assert s.policies == ("abc-100",) and s.support_policy == "abc-100"
    assert (s.topic_prefix, s.redis_prefix, s.partitions) == ("grader.", "grader:", 8)
    assert (s.web_host, s.web_port, s.api_token) == ("127.0.0.1", 6066, None)
    assert (s.broker_quirks, s.live_ticks, s.log_level) == ("none", True, "info")
    assert s.web_idle_timeout == 10
    assert s.kafka_security == PLAINTEXT and s.kafka_security.check_hostname
    assert s.kafka == KafkaTarget("kafka://127.0.0.1:9092", PLAINTEXT)


def test_file_then_environment_wins(tmp_path: Path) -> None:
    toml = 'policies = ["stars", "abc-100"]\npartitions = 4\nlive_ticks = false\n'
    s = settings_in(tmp_path, toml, GRADER_PARTITIONS="2", GRADER_BROKER_QUIRKS="tansu")
    assert s.policies == ("stars", "abc-100") and s.support_policy == "stars"
    assert s.partitions == 2 and s.broker_quirks == "tansu" and s.live_ticks is False


@pytest.mark.parametrize(
    ("toml", "env", "needle"),
    [
        ("", {"GRADER_PARTITIONS": "0"}, "partitions (GRADER_PARTITIONS)"),
        ("", {"GRADER_WEB_PORT": "http"}, "web_port (GRADER_WEB_PORT)"),
        ("", {"GRADER_WEB_IDLE_TIMEOUT": "0"}, "web_idle_timeout (GRADER_WEB_IDLE_TIMEOUT)"),
        ("", {"GRADER_KAFKA_URL": "localhost:9092"}, "kafka_url (GRADER_KAFKA_URL)"),
        ("", {"GRADER_REDIS_URL": "http://x"}, "redis_url (GRADER_REDIS_URL)"),
        ("", {"GRADER_SUPPORT_POLICY": "stars"}, "support_policy (GRADER_SUPPORT_POLICY)"),
        ("", {"GRADER_POLICIES": " , "}, "policies (GRADER_POLICIES)"),
        ("", {"GRADER_BROKER_QUIRKS": "redpanda"}, "broker_quirks (GRADER_BROKER_QUIRKS)"),
        ("", {"GRADER_LIVE_TICKS": "maybe"}, "live_ticks (GRADER_LIVE_TICKS)"),
        ("", {"GRADER_LOG_LEVEL": "loud"}, "log_level (GRADER_LOG_LEVEL)"),
        ('colour = "red"\n', {}, "unknown setting 'colour'"),
        ("partitions = \n", {}, "cannot read settings"),
    ],
)
def test_bad_settings_name_the_setting(
    tmp_path: Path, toml: str, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(SettingsError, match=None) as info:
        settings_in(tmp_path, toml, **env)
    assert needle in str(info.value) and "\n" not in str(info.value)


PASSWORD = "s3cret-Pa55word"
SASL_SSL_ENV = {
    "GRADER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "GRADER_KAFKA_SASL_MECHANISM": "scram-sha-512",
    "GRADER_KAFKA_USERNAME": "grader",
    "GRADER_KAFKA_PASSWORD": PASSWORD,
}


def test_kafka_security_from_file_and_environment(tmp_path: Path) -> None:
    toml = ('kafka_security_protocol = "SASL_PLAINTEXT"\nkafka_sasl_mechanism = "PLAIN"\n'
            'kafka_username = "from-file"\nkafka_ssl_check_hostname = false\n')
    s = settings_in(tmp_path, toml, GRADER_KAFKA_USERNAME="grader",
                    GRADER_KAFKA_PASSWORD=PASSWORD)
    assert s.kafka_security == KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "grader",
                                             Secret(PASSWORD), check_hostname=False)
    s = settings_in(tmp_path, **SASL_SSL_ENV)
    assert s.kafka_security == KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "grader",
                                             Secret(PASSWORD))
    assert s.kafka.security is s.kafka_security and s.kafka.url == s.kafka_url


def test_the_password_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    s = settings_in(tmp_path, **SASL_SSL_ENV)
    assert s.kafka_security.password is not None
    assert s.kafka_security.password.reveal() == PASSWORD
    assert PASSWORD not in repr(s) and PASSWORD not in str(s) and "***" in repr(s)


@pytest.mark.parametrize(("toml", "variable"), [
    (f'kafka_password = "{PASSWORD}"\n', "GRADER_KAFKA_PASSWORD"),
    (f'redis_url = "redis://:{PASSWORD}@127.0.0.1:6379/0"\n', "GRADER_REDIS_URL"),
    (f'redis_url = "redis://user:{PASSWORD}@127.0.0.1:6379/0"\n', "GRADER_REDIS_URL"),
    (f'api_token = "{PASSWORD}"\n', "GRADER_API_TOKEN"),
])
def test_a_secret_in_the_file_is_refused_without_showing_it(tmp_path: Path, toml: str,
                                                             variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_in(tmp_path, toml, **SASL_SSL_ENV)
    message = str(info.value)
    assert variable in message and "grader.toml" in message
    assert PASSWORD not in message and "\n" not in message


def test_the_redis_password_is_not_in_the_settings_repr(tmp_path: Path) -> None:
    s = settings_in(tmp_path, GRADER_REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:6379/0")
    assert s.redis_url.endswith("@127.0.0.1:6379/0") and PASSWORD not in repr(s)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GRADER_KAFKA_SECURITY_PROTOCOL": "TLS"},
         "kafka_security_protocol (GRADER_KAFKA_SECURITY_PROTOCOL): 'TLS' is not one of"),
        ({**SASL_SSL_ENV, "GRADER_KAFKA_SASL_MECHANISM": ""},
         "kafka_sasl_mechanism (GRADER_KAFKA_SASL_MECHANISM): required with"),
        ({**SASL_SSL_ENV, "GRADER_KAFKA_SASL_MECHANISM": "GSSAPI"},
         "kafka_sasl_mechanism (GRADER_KAFKA_SASL_MECHANISM): 'GSSAPI' is not one of PLAIN"),
        ({**SASL_SSL_ENV, "GRADER_KAFKA_USERNAME": " "},
         "kafka_username (GRADER_KAFKA_USERNAME): required with kafka_security_protocol"),
        ({**SASL_SSL_ENV, "GRADER_KAFKA_PASSWORD": ""},
         "kafka_password (GRADER_KAFKA_PASSWORD): required with kafka_security_protocol"),
        ({"GRADER_KAFKA_PASSWORD": PASSWORD},
         "kafka_password (GRADER_KAFKA_PASSWORD): only SASL_PLAINTEXT and SASL_SSL use it"),
        ({"GRADER_KAFKA_SECURITY_PROTOCOL": "SSL", "GRADER_KAFKA_USERNAME": "grader"},
         "kafka_username (GRADER_KAFKA_USERNAME): only SASL_PLAINTEXT and SASL_SSL use it"),
        ({**SASL_SSL_ENV, "GRADER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
          "GRADER_KAFKA_CA_FILE": "/etc/hosts"},
         "kafka_ca_file (GRADER_KAFKA_CA_FILE): only SSL and SASL_SSL use it"),
        ({"GRADER_KAFKA_SECURITY_PROTOCOL": "SSL", "GRADER_KAFKA_CA_FILE": "/no/such/ca.pem"},
         "kafka_ca_file (GRADER_KAFKA_CA_FILE): /no/such/ca.pem: No such file or directory"),
        ({"GRADER_KAFKA_SECURITY_PROTOCOL": "SSL", "GRADER_KAFKA_CA_FILE": "/etc/hosts"},
         "kafka_ca_file (GRADER_KAFKA_CA_FILE): /etc/hosts: not a usable PEM file"),
        ({"GRADER_KAFKA_SECURITY_PROTOCOL": "SSL", "GRADER_KAFKA_CERT_FILE": "/etc/hosts"},
         "kafka_cert_file (GRADER_KAFKA_CERT_FILE): /etc/hosts: not a usable PEM file"),
        ({"GRADER_KAFKA_SECURITY_PROTOCOL": "SSL", "GRADER_KAFKA_KEY_FILE": "/etc/hosts"},
         "kafka_key_file (GRADER_KAFKA_KEY_FILE): needs kafka_cert_file"),
        ({"GRADER_KAFKA_SECURITY_PROTOCOL": "SSL", "GRADER_KAFKA_SSL_CHECK_HOSTNAME": "maybe"},
         "kafka_ssl_check_hostname (GRADER_KAFKA_SSL_CHECK_HOSTNAME): 'maybe' is not one of"),
        ({"GRADER_KAFKA_URL": f"kafka://grader:{PASSWORD}@broker:9093"},
         "kafka_url (GRADER_KAFKA_URL): holds a user name or password"),
        ({"GRADER_KAFKA_URL": f"grader:{PASSWORD}@broker:9093"},
         "kafka_url (GRADER_KAFKA_URL): holds a user name or password"),
    ],
)
def test_bad_kafka_security_settings_name_the_setting(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings_in(tmp_path, **env)
    message = str(info.value)
    assert message.startswith("setting ") and needle in message, message
    assert "\n" not in message and PASSWORD not in message
