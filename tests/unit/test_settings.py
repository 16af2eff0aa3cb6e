"""Settings: config/grader.toml, overridden by GRADER_* (the environment wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grader.errors import SettingsError
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
