"""Settings: config/grader.toml, each overridable by a GRADER_* variable.

Validated once into a frozen Settings; a bad value raises SettingsError with
one line naming the setting. The environment wins over the file, and the
Kafka password comes only from the environment (``GRADER_KAFKA_PASSWORD``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from grader.core import tomlguard
from grader.core.errors import GraderError, PolicyError, SettingsError
from grader.core.grading import Grading
from grader.core.policy import Policy, load_policy
from grader.core.resources import packaged
from grader.core.urlcheck import kafka_url_problem, redis_url_problem
from grader.kafka.auth import (
    MECHANISMS,
    PLAINTEXT,
    PROTOCOLS,
    KafkaSecurity,
    KafkaTarget,
    Secret,
    ssl_context,
)

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
    "web_idle_timeout": "10",
    "warn_days": "30",
    "data_dir": "./data",
    "api_token": "",
    "api_tokens_file": "",
    "broker_quirks": "none",
    "live_ticks": "1",
    "log_level": "info",
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_mechanism": "",
    "kafka_username": "",
    "kafka_ca_file": "",
    "kafka_cert_file": "",
    "kafka_key_file": "",
    "kafka_ssl_check_hostname": "true",
    "redis_ca_file": "",
    "redis_cert_file": "",
    "redis_key_file": "",
}
#: Read from the environment only, never from a file.
PASSWORD_VARIABLE = "GRADER_KAFKA_PASSWORD"
KAFKA_FILES = ("kafka_ca_file", "kafka_cert_file", "kafka_key_file")
REDIS_FILES = ("redis_ca_file", "redis_cert_file", "redis_key_file")
BROKER_QUIRKS = ("none", "tansu")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Settings:
    """Validated settings of a grader process."""

    kafka_url: str
    redis_url: str = field(repr=False)  # may hold a password (from the environment only)
    policies: tuple[str, ...]
    support_policy: str
    topic_prefix: str
    redis_prefix: str
    partitions: int
    web_host: str
    web_port: int
    data_dir: Path
    api_token: str | None = field(repr=False)  # a secret; the worker keeps only its digest
    config_dir: Path
    broker_quirks: str = "none"  # "tansu": workarounds for the local broker (docs/streaming.md)
    live_ticks: bool = True  # tick every customer at each local midnight
    log_level: str = "info"
    kafka_security: KafkaSecurity = PLAINTEXT  # repr shows no password
    redis_files: tuple[str | None, str | None, str | None] = (None, None, None)  # CA, cert, key
    web_idle_timeout: int = 10  # seconds a web connection may wait for a whole request
    api_tokens_file: Path | None = None  # the customer endpoint's callers (grader/web/access.py)
    warn_days: int = 30  # tier-warnings: a drop at most this many days ahead (0: none)

    @property
    def kafka(self) -> KafkaTarget:
        """The Kafka cluster with the security settings, for every client of grader."""
        return KafkaTarget(self.kafka_url, self.kafka_security)


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
    return _validate(raw, cdir, env.get(PASSWORD_VARIABLE) or None)


def _read_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        doc = tomlguard.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomlguard.UnreadableToml) as exc:
        raise SettingsError(f"{path}: cannot read settings: {exc}") from None
    out: dict[str, str] = {}
    for key, value in doc.items():
        if key == "kafka_password":  # the value is not shown
            raise SettingsError(f"{path}: kafka_password is not read from a file: set "
                                f"{PASSWORD_VARIABLE} in the environment")
        if key not in DEFAULTS:
            raise SettingsError(f"{path}: unknown setting {key!r}")
        if key == "api_token":  # the value is not shown
            raise SettingsError(f"{path}: api_token is not read from a file: set "
                                "GRADER_API_TOKEN in the environment")
        if key == "redis_url" and "@" in str(value):  # the value is not shown
            raise SettingsError(f"{path}: redis_url holds a user name or password, which is "
                                "not read from a file: set GRADER_REDIS_URL in the environment")
        out[key] = _file_value(path, key, value)
    return out


def _file_value(path: Path, key: str, value: object) -> str:
    """A setting from the file as text: a list (of policies) is joined with commas."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(item, dict | list) for item in items):
        raise SettingsError(f"{path}: setting {key}: a table or a nested list is not a value")
    return ",".join(map(str, items))


def _validate(raw: dict[str, str], cdir: Path, password: str | None) -> Settings:
    for key, text in raw.items():
        _printable(key, text)
    policies = tuple(p.strip() for p in raw["policies"].split(",") if p.strip())
    if not policies:
        raise SettingsError("setting policies (GRADER_POLICIES): names at least one policy")
    support = raw["support_policy"].strip() or Path(policies[0]).stem  # a path: its name
    if support not in [Path(p).stem for p in policies]:
        raise SettingsError(
            f"setting support_policy (GRADER_SUPPORT_POLICY): {support!r} "
            "is not one of the active policies"
        )
    if "@" in raw["kafka_url"]:  # checked first: the value is not shown
        raise SettingsError("setting kafka_url (GRADER_KAFKA_URL): holds a user name or "
                            "password; use GRADER_KAFKA_USERNAME and GRADER_KAFKA_PASSWORD")
    _url(raw, "kafka_url", kafka_url_problem)
    if raw["redis_url"].strip():  # empty: no support queues
        _url(raw, "redis_url", redis_url_problem)
    redis_files = tuple(raw[key].strip() or None for key in REDIS_FILES)
    for key, value in zip(REDIS_FILES, redis_files, strict=True):
        if value is not None and not Path(value).is_file():
            _refuse(key, f"no such file: {value}")
    if redis_files[0] and not raw["redis_url"].startswith("rediss://"):
        _refuse("redis_ca_file", "needs a rediss:// redis_url (TLS)")
    if (redis_files[1] is None) != (redis_files[2] is None):
        _refuse("redis_cert_file", "a client certificate needs redis_key_file too, and back")
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
        redis_url=raw["redis_url"].strip(),
        policies=policies,
        support_policy=support,
        topic_prefix=raw["topic_prefix"],
        redis_prefix=raw["redis_prefix"],
        partitions=_int(raw, "partitions", 1, 10_000),
        web_host=raw["web_host"],
        web_port=_int(raw, "web_port", 1, 65_535),
        data_dir=_data_dir(raw["data_dir"]),
        api_token=_api_token(raw["api_token"]),
        config_dir=cdir,
        broker_quirks=raw["broker_quirks"],
        live_ticks=raw["live_ticks"] in ("1", "true"),
        log_level=raw["log_level"],
        kafka_security=_kafka_security(raw, password),
        redis_files=redis_files,  # type: ignore[arg-type]
        web_idle_timeout=_int(raw, "web_idle_timeout", 1, 3600),
        api_tokens_file=Path(raw["api_tokens_file"].strip()) if raw["api_tokens_file"].strip()
        else None,
        warn_days=_int(raw, "warn_days", 0, 3660),
    )


def _kafka_security(raw: dict[str, str], password: str | None) -> KafkaSecurity:
    """The Kafka security settings: each one used by the protocol, and only those."""
    _choice(raw, "kafka_security_protocol", PROTOCOLS, fold=str.upper)
    protocol = raw["kafka_security_protocol"]
    mechanism = raw["kafka_sasl_mechanism"].strip().upper() or None
    username = raw["kafka_username"].strip() or None
    given = {"kafka_sasl_mechanism": mechanism, "kafka_username": username,
             "kafka_password": password}
    if protocol.startswith("SASL_"):
        for key, value in given.items():
            if value is None:
                _refuse(key, f"required with kafka_security_protocol {protocol}")
        _choice(raw, "kafka_sasl_mechanism", MECHANISMS, fold=str.upper)
    _unused(given, protocol, ("SASL_PLAINTEXT", "SASL_SSL"))
    files = {key: Path(raw[key].strip()) if raw[key].strip() else None for key in KAFKA_FILES}
    _unused(files, protocol, ("SSL", "SASL_SSL"))
    if files["kafka_key_file"] and not files["kafka_cert_file"]:
        _refuse("kafka_key_file", "needs kafka_cert_file (GRADER_KAFKA_CERT_FILE)")
    for key, path in files.items():
        if path is not None:
            _readable(key, path)
    _choice(raw, "kafka_ssl_check_hostname", ("1", "0", "true", "false"))
    security = KafkaSecurity(
        protocol=protocol, sasl_mechanism=mechanism, username=username,
        password=Secret(password) if password else None, ca_file=files["kafka_ca_file"],
        cert_file=files["kafka_cert_file"], key_file=files["kafka_key_file"],
        check_hostname=raw["kafka_ssl_check_hostname"] in ("1", "true"))
    try:
        ssl_context(security)  # the files hold certificates and a matching key
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return security


def _unused(given: Mapping[str, object], protocol: str, users: tuple[str, ...]) -> None:
    """Refuse a setting the protocol would ignore (credentials meant for TLS or SASL)."""
    if protocol in users:
        return
    for key, value in given.items():
        if value is not None:
            _refuse(key, f"only {' and '.join(users)} use it, but kafka_security_protocol "
                         f"(GRADER_KAFKA_SECURITY_PROTOCOL) is {protocol}")


def _readable(key: str, path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        _refuse(key, f"{path}: {exc.strerror}")


def _refuse(key: str, why: str) -> NoReturn:
    raise SettingsError(f"setting {key} (GRADER_{key.upper()}): {why}")


def _choice(raw: dict[str, str], key: str, options: tuple[str, ...],
            fold: Callable[[str], str] = str.lower) -> None:
    raw[key] = fold(raw[key].strip())
    if raw[key] not in options:
        raise SettingsError(
            f"setting {key} (GRADER_{key.upper()}): {raw[key]!r} is not one of {', '.join(options)}"
        )


def _url(raw: dict[str, str], key: str, problem_of: Callable[[str], str | None]) -> None:
    problem = problem_of(raw[key].strip())
    if problem is not None:
        shown = "the value" if "@" in raw[key] else repr(raw[key])  # may hold a password
        _refuse(key, f"{shown}: {problem}")


def _printable(key: str, value: str) -> None:
    """Refuse a control character (a newline read with a secret, ...), never showing the value."""
    for i, char in enumerate(value):
        if not char.isprintable() and not (key == "api_token" and char.isspace()):
            _refuse(key, f"holds the character {char!r} at position {i + 1} (a stray newline?); "
                         "the value is not shown")


def _api_token(token: str) -> str | None:
    """The token the customer endpoint asks for: one word, compared exactly."""
    if any(char.isspace() for char in token):  # "token\n" from a file would never match
        _refuse("api_token", "holds a space, tab or newline, so no request could give it; "
                             "the value is not shown")
    return token or None


def _data_dir(text: str) -> Path:
    """The local table state's directory: one that exists, or that can be made."""
    path = Path(text)
    try:
        if path.exists():
            if not path.is_dir():
                _refuse("data_dir", f"{text} is not a directory")
            return path
        parent = next(p for p in path.absolute().parents if p.exists())
    except OSError as exc:  # a name too long, a directory we may not look in
        _refuse("data_dir", f"{text}: {exc.strerror}")
    if not parent.is_dir():
        _refuse("data_dir", f"cannot create {text}: {parent} is not a directory")
    return path  # made by the worker, which alone needs it (make_data_dir)


def make_data_dir(settings: Settings) -> None:
    """Create the worker's data dir, before it touches Kafka; one line if it cannot be."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _refuse("data_dir", f"cannot create {settings.data_dir}: {exc.strerror}")


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
    """A file path, or a name: ``cdir``/policies/NAME.toml, else the preset shipped in the
    package (grader/policies/), so a user's own file of a preset's name wins."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise PolicyError(f"policy file {name_or_path} not found")
        return load_policy(path)
    for folder in (cdir / "policies", packaged("policies")):
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return load_policy(candidate)
    presets = ", ".join(preset_names())
    raise PolicyError(f"unknown policy {name_or_path!r}: no {name_or_path}.toml in "
                      f"{cdir / 'policies'}, and no such preset ({presets})")


def preset_names() -> list[str]:
    """The names of the preset policies shipped in the package, sorted."""
    return sorted(f.name.removesuffix(".toml") for f in packaged("policies").iterdir()
                  if f.name.endswith(".toml"))


def load_grading(settings: Settings) -> Grading:
    """The active policies of ``settings``; a bad one is a one-line GraderError."""
    policies = tuple(resolve_policy(name, settings.config_dir) for name in settings.policies)
    try:
        return Grading(policies)
    except ValueError as exc:
        raise GraderError(f"setting policies (GRADER_POLICIES): {exc}") from None


def support_policy(settings: Settings, grading: Grading) -> Policy:
    """The active policy named by the support_policy setting (a name or a file's stem)."""
    stems = [Path(name).stem for name in settings.policies]
    return grading.policies[stems.index(settings.support_policy)]
