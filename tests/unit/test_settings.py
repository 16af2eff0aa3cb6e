"""Settings: config/grader.toml, overridden by GRADER_* (the environment wins)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.core.errors import SettingsError
from grader.kafka.auth import PLAINTEXT, KafkaSecurity, KafkaTarget, Secret
from grader.settings import DEFAULTS, load_settings, make_data_dir


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


# -- issue 19: every bad value is one SettingsError line, never another exception --------

@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"GRADER_REDIS_URL": "redis://localhost:abc/0"}, "port 'abc' is not a number"),
        ({"GRADER_REDIS_URL": "redis://localhost:99999/0"}, "port '99999' is not a number"),
        ({"GRADER_REDIS_URL": "redis://localhost:0/0"}, "port '0' is not a number"),
        ({"GRADER_REDIS_URL": "redis://[::1"}, "Invalid IPv6 URL"),
        ({"GRADER_REDIS_URL": "redis://[::g]:6379/0"}, "IPv6 address"),
        ({"GRADER_REDIS_URL": "redis:localhost"}, "not a redis://"),
        ({"GRADER_REDIS_URL": "redis://"}, "names no host"),
        ({"GRADER_REDIS_URL": "redis://h:6379/zero"}, "database 'zero' is not a number"),
        ({"GRADER_REDIS_URL": "redis://h:6379/0?password=x"}, "no query other than ?db=N"),
        ({"GRADER_REDIS_URL": "redis://h/0#f"}, "fragment"),
        ({"GRADER_REDIS_URL": "unix://"}, "names no socket path"),
        ({"GRADER_KAFKA_URL": "kafka://[::1:9092"}, "is not host:port"),
        ({"GRADER_KAFKA_URL": "kafka://h:abc"}, "port 'abc' is not a number"),
        ({"GRADER_KAFKA_URL": "kafka://h:"}, "port '' is not a number"),
        ({"GRADER_KAFKA_URL": "kafka://h1:9092;h2:70000"}, "port '70000'"),
        ({"GRADER_KAFKA_URL": "kafka://h1;http://h2"}, "'http://h2' is not a kafka:// URL"),
        ({"GRADER_KAFKA_URL": "kafka://a b:9092"}, "'a b' is not a host name"),
        ({"GRADER_KAFKA_URL": "kafka://h:9092/topic"}, "port '9092/topic'"),
        ({"GRADER_KAFKA_URL": "kafka://;"}, "names no host"),
    ],
)
def test_malformed_urls_are_one_line_naming_the_setting(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings_in(tmp_path, **env)
    (variable,) = env
    message = str(info.value)
    assert f"({variable})" in message and needle in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("GRADER_KAFKA_URL", "kafka://h1:9092;h2:9093"),
        ("GRADER_KAFKA_URL", "kafka://h1,h2:9093/"),
        ("GRADER_KAFKA_URL", "aiokafka://[::1]:9092"),
        ("GRADER_KAFKA_URL", "kafka://kafka_1.internal"),
        ("GRADER_REDIS_URL", "redis://[::1]:6379/0"),
        ("GRADER_REDIS_URL", "rediss://user:p%40ss@redis.example:6380/2"),
        ("GRADER_REDIS_URL", "redis://:pw@h"),
        ("GRADER_REDIS_URL", "unix:///run/redis.sock?db=3"),
        ("GRADER_REDIS_URL", ""),
    ],
)
def test_well_formed_urls_are_taken(tmp_path: Path, variable: str, url: str) -> None:
    s = settings_in(tmp_path, **{variable: url})
    assert url in (s.kafka_url, s.redis_url)


def test_data_dir_must_be_a_directory_or_creatable(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for value, needle in [(afile, "is not a directory"), (afile / "sub", "is not a directory"),
                          (afile / "a" / "b", f"{afile} is not a directory")]:
        with pytest.raises(SettingsError, match=r"setting data_dir \(GRADER_DATA_DIR\)") as info:
            settings_in(tmp_path, GRADER_DATA_DIR=str(value))
        assert needle in str(info.value)
    new = tmp_path / "new" / "data"
    assert settings_in(tmp_path, GRADER_DATA_DIR=str(new)).data_dir == new
    assert not new.exists()  # checked, not made: only the worker makes it


def test_a_data_dir_that_cannot_be_made_is_one_line_before_kafka(tmp_path: Path) -> None:
    """The worker makes its data dir before it touches Kafka (a parent that is a file
    stands for any reason mkdir fails, even as root)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = settings_in(tmp_path, GRADER_DATA_DIR=str(tmp_path / "d"))
    settings = dataclasses.replace(settings, data_dir=blocker / "data")
    with pytest.raises(SettingsError, match=r"setting data_dir \(GRADER_DATA_DIR\): cannot "
                                            r"create .*/file/data: Not a directory"):
        make_data_dir(settings)


@pytest.mark.parametrize("token", ["s3cret\n", "s3cret\r\n", " s3cret", "s3 cret", "\t",
                                   "s3cret\x00", "s3cret\x7f"])
def test_an_api_token_with_whitespace_or_a_control_character_is_refused(
    tmp_path: Path, token: str
) -> None:
    with pytest.raises(SettingsError) as info:
        settings_in(tmp_path, GRADER_API_TOKEN=token)
    message = str(info.value)
    assert message.startswith("setting api_token (GRADER_API_TOKEN): ")
    assert "s3" not in message and "\n" not in message


def test_a_control_character_in_any_setting_is_refused_without_showing_it(
    tmp_path: Path
) -> None:
    with pytest.raises(SettingsError) as info:
        settings_in(tmp_path, GRADER_REDIS_URL="redis://:hunter2@h:6379/0\n")
    message = str(info.value)
    assert "redis_url (GRADER_REDIS_URL)" in message and "'\\n' at position 26" in message
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("partitions = " + "[" * 2000 + "]" * 2000 + "\n", "nested deeper than 16"),
        ("partitions" + ".p" * 20_000 + " = 1\n", "a dotted key of more than 16 parts"),
        ("partitions = " + "9" * 5000 + "\n", "a number with too many digits"),
        ("partitions = {n = 8}\n", "setting partitions: a table or a nested list"),
        ('policies = [["abc-100"]]\n', "setting policies: a table or a nested list"),
        ("# " + "x" * 1_000_001 + "\n", "more than the 1,000,000 read"),
    ],
)
def test_a_malformed_settings_file_is_one_line(tmp_path: Path, toml: str, needle: str) -> None:
    with pytest.raises(SettingsError) as info:
        settings_in(tmp_path, toml)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "grader.toml")) and needle in message, message
    assert "\n" not in message


SETTINGS = (*DEFAULTS, "kafka_password")


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=st.dictionaries(st.sampled_from(SETTINGS), st.text(), min_size=1, max_size=3))
def test_any_string_for_any_setting_is_settings_or_one_line_naming_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (tmp_path / "grader.toml").write_text("")
    variables = {f"GRADER_{key.upper()}": value for key, value in env.items()}
    try:
        load_settings({"GRADER_CONFIG_DIR": str(tmp_path), **variables})
    except SettingsError as exc:
        message = str(exc)
        assert "\n" not in message and message.isprintable(), message
        assert any(f"setting {key}" in message or f"({key}" in message for key in env) or any(
            key in message for key in env), message


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(tuple(DEFAULTS)), value=st.one_of(
    st.text(), st.integers(), st.floats(allow_nan=False), st.booleans(),
    st.lists(st.text(), max_size=3)))
def test_any_value_in_the_settings_file_is_settings_or_one_line(
    tmp_path: Path, key: str, value: object
) -> None:
    import json

    text = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
    (tmp_path / "grader.toml").write_text(f"{key} = {text}\n", encoding="utf-8")
    try:
        load_settings({"GRADER_CONFIG_DIR": str(tmp_path)})
    except SettingsError as exc:
        message = str(exc)
        assert "\n" not in message and message.isprintable(), message
        assert key in message or "cannot read settings" in message, message
