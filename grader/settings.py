"""Settings: config/grader.toml, each overridable by a GRADER_* variable.

Validated once into a frozen Settings; a bad value raises SettingsError with
one line naming the setting. The environment wins over the file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from grader.errors import PolicyError, SettingsError
from grader.policy import Policy, load_policy

SOURCE_CONFIG = Path(__file__).resolve().parent.parent / "config"
DEFAULTS: dict[str, str] = {
    "kafka_url": "kafka://127.0.0.1:9092",
    "redis_url": "redis://127.0.0.1:6379/0",
    "policies": "abc-100",
    "support_policy": "",
    "topic_prefix": "grader.",
    "redis_prefix": "grader:",
    "partitions": "8",
    "web_host": "127.0.0.1",
    "web_port": "6066",
    "data_dir": "./data",
    "api_token": "",
    "broker_quirks": "none",
    "live_ticks": "1",
    "log_level": "info",
}
BROKER_QUIRKS = ("none", "tansu")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Settings:
    """Validated settings of a grader process."""

    kafka_url: str
    redis_url: str
    policies: tuple[str, ...]
    support_policy: str
    topic_prefix: str
    redis_prefix: str
    partitions: int
    web_host: str
    web_port: int
    data_dir: Path
    api_token: str | None
    config_dir: Path
    broker_quirks: str = "none"  # "tansu": workarounds for the local broker (docs/streaming.md)
    live_ticks: bool = True  # tick every customer at each local midnight
    log_level: str = "info"


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where grader.toml and policies/ live: $GRADER_CONFIG_DIR, else ./config."""
    env = os.environ if env is None else env
    return Path(env.get("GRADER_CONFIG_DIR", "config"))


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read config/grader.toml (if present) and the environment; validate."""
    env = os.environ if env is None else env
    cdir = config_dir(env)
    raw = dict(DEFAULTS)
    raw.update(_read_file(cdir / "grader.toml"))
    for key in DEFAULTS:
        if f"GRADER_{key.upper()}" in env:
            raw[key] = env[f"GRADER_{key.upper()}"]
    return _validate(raw, cdir)


def _read_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read settings: {exc}") from None
    out: dict[str, str] = {}
    for key, value in doc.items():
        if key not in DEFAULTS:
            raise SettingsError(f"{path}: unknown setting {key!r}")
        out[key] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return out


def _validate(raw: dict[str, str], cdir: Path) -> Settings:
    policies = tuple(p.strip() for p in raw["policies"].split(",") if p.strip())
    if not policies:
        raise SettingsError("setting policies (GRADER_POLICIES): names at least one policy")
    support = raw["support_policy"].strip() or policies[0]
    if support not in [Path(p).stem for p in policies]:
        raise SettingsError(
            f"setting support_policy (GRADER_SUPPORT_POLICY): {support!r} "
            "is not one of the active policies"
        )
    _url(raw, "kafka_url", ("kafka", "aiokafka"))
    _url(raw, "redis_url", ("redis", "rediss", "unix"))
    for key in ("topic_prefix", "redis_prefix", "web_host"):
        if not raw[key] or any(c.isspace() for c in raw[key]):
            raise SettingsError(
                f"setting {key} (GRADER_{key.upper()}): must be non-empty, no spaces"
            )
    _choice(raw, "broker_quirks", BROKER_QUIRKS)
    _choice(raw, "live_ticks", ("1", "0", "true", "false"))
    _choice(raw, "log_level", LOG_LEVELS)
    return Settings(
        kafka_url=raw["kafka_url"],
        redis_url=raw["redis_url"],
        policies=policies,
        support_policy=support,
        topic_prefix=raw["topic_prefix"],
        redis_prefix=raw["redis_prefix"],
        partitions=_int(raw, "partitions", 1, 10_000),
        web_host=raw["web_host"],
        web_port=_int(raw, "web_port", 1, 65_535),
        data_dir=Path(raw["data_dir"]),
        api_token=raw["api_token"] or None,
        config_dir=cdir,
        broker_quirks=raw["broker_quirks"],
        live_ticks=raw["live_ticks"] in ("1", "true"),
        log_level=raw["log_level"],
    )


def _choice(raw: dict[str, str], key: str, options: tuple[str, ...]) -> None:
    raw[key] = raw[key].strip().lower()
    if raw[key] not in options:
        raise SettingsError(
            f"setting {key} (GRADER_{key.upper()}): {raw[key]!r} is not one of {', '.join(options)}"
        )


def _url(raw: dict[str, str], key: str, schemes: tuple[str, ...]) -> None:
    parsed = urlparse(raw[key])
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        raise SettingsError(
            f"setting {key} (GRADER_{key.upper()}): {raw[key]!r} is not a {schemes[0]}:// URL"
        )


def _int(raw: dict[str, str], key: str, low: int, high: int) -> int:
    try:
        value = int(raw[key])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise SettingsError(
            f"setting {key} (GRADER_{key.upper()}): {raw[key]!r} is not a whole "
            f"number {low}..{high}"
        )
    return value


def resolve_policy(name_or_path: str, cdir: Path) -> Policy:
    """A preset name (looked up in ``cdir``/policies, then the source tree) or a file path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise PolicyError(f"policy file {name_or_path} not found")
        return load_policy(path)
    for folder in (cdir / "policies", SOURCE_CONFIG / "policies"):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return load_policy(candidate)
    raise PolicyError(
        f"unknown policy {name_or_path!r}: no {name_or_path}.toml in {cdir / 'policies'}"
    )
