"""The compose stack (docker-compose.yml), checked without a Docker engine.

No Docker engine runs on the development machines, so the stack itself is never
started here (docs/deploy.md). What is checked: the file against the Compose
Specification's JSON schema (vendored in tests/data/compose-spec.json, origin in
tests/data/compose-spec.md), before and after the variables are interpolated; that
every password and token is a required ${VAR} reference; the workers' settings;
that the Prometheus config the stack mounts scrapes both workers, and is valid for
`promtool check config`; and that Grafana's provisioning, the dashboard and
docs/deploy.md agree. The dashboard's queries are run against a real Prometheus in
tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft202012Validator

from grader.devtools.kafkabroker import kafka_version
from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
#: compose-go v2.16.2's schema/compose-spec.json (tests/data/compose-spec.md)
SCHEMA_SHA256 = "f266dcbb043229405d7cedd5aec918f9102c2b3d5e3850808fdd8edd564a43ff"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "grader.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "grader.yml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"

#: The secrets the stack needs, each required from the environment.
SECRETS = ("REDIS_PASSWORD", "GRADER_API_TOKEN", "GRAFANA_ADMIN_PASSWORD")
#: Stand-ins for the secrets when interpolating (never real ones).
FAKE_ENV = {name: f"fake-{name.lower().replace('_', '-')}" for name in SECRETS}
#: The panels the dashboard must have: a metric each query must use -> how many panels.
REQUIRED_METRICS = (
    "grader_customers",
    "grader_tier_changes_total",
    "grader_consumer_lag",
    "grader_event_to_tier_change_seconds_bucket",
    "grader_rejections_total",
    "grader_rebalances_total",
    "grader_redis_errors_total",
)
#: Grafana's variables, as the PromQL they stand for when the dashboard's queries are run
#: outside Grafana (tests/integration/test_dashboard.py): a window of a minute, every worker.
VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "instance": ".*",
}

# ---------------------------------------------------------------------------------------
# helpers (also used by tests/integration/test_dashboard.py)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    """docker-compose.yml as written (``${VAR}`` references not interpolated); YAML merge
    keys (``<<: *worker``) resolved, as Compose does."""
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dash: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dash: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL as written) of every query of every panel."""
    return [(panel["title"], target["refId"], target["expr"])
            for panel in panels(dash) for target in panel.get("targets", [])]


def promql(expr: str) -> str:
    """A panel's query with Grafana's variables replaced (VARIABLES): ``$name``,
    ``${name}`` and ``${name:format}``. An unknown variable fails."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown dashboard variable ${name} in {expr}"
        return VARIABLES[name]

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)
    assert "$" not in out, out
    return out


_REFERENCE = re.compile(r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_]\w*))")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's interpolation of ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}``, ``$VAR`` and ``$$``, in every
    string of ``value`` (keys included); a missing required variable raises
    MissingVariable naming it."""
    if isinstance(value, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        op, arg = match.group(3), match.group(4) or ""
        got = env.get(name)
        unset_or_empty = not got  # the ':' forms treat empty as unset
        missing = unset_or_empty if op and op.startswith(":") else got is None
        if op in (":?", "?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and missing:
            return arg
        if op in (":+", "+"):
            return "" if missing else arg
        return got or ""

    return _REFERENCE.sub(one, value)


def references(text: str) -> list[tuple[str, str | None]]:
    """(name, operator) of each ``${...}`` or ``$NAME`` reference in ``text``."""
    return [(m.group(2) or m.group(5), m.group(3)) for m in _REFERENCE.finditer(text)
            if not m.group(1)]


def is_required_reference(text: str) -> bool:
    """Whether ``text`` is exactly one reference to a variable that must be set and has
    no default: ``${NAME:?message}`` or ``${NAME?message}``."""
    match = _REFERENCE.fullmatch(text)
    return bool(match and match.group(2) and match.group(3) in (":?", "?"))


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (Compose allows a list of NAME=value)."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def as_list(command: Any) -> list[str]:
    return command.split() if isinstance(command, str) else list(command or [])


def worker_services(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run `grader worker` (built from this repository's Dockerfile)."""
    return {name: s for name, s in spec["services"].items()
            if "build" in s and as_list(s.get("command", ["worker"]))[:1] == ["worker"]}


SECRET_NAME = re.compile(r"(PASSWORD|PASS|TOKEN|SECRET|_AUTH|_KEY|CREDENTIALS?)$", re.I)
SECRET_FLAGS = ("--requirepass", "--masterauth", "--password", "--token")


def mask_references(text: str) -> tuple[str, list[str]]:
    """``text`` with each reference replaced by ``\\x00N\\x00`` (its messages may hold
    spaces, ':' or '@'), and the references."""
    refs: list[str] = []

    def mark(match: re.Match[str]) -> str:
        refs.append(match.group(0))
        return f"\x00{len(refs) - 1}\x00"

    return _REFERENCE.sub(mark, text), refs


def literal_secrets(spec: Mapping[str, Any]) -> list[str]:
    """Where ``spec`` holds a secret that is not a required ``${VAR}`` reference: a
    password/token variable, a password in a URL, a password flag's argument, or a
    secret variable with a default."""
    found = []
    for name, service in spec.get("services", {}).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not is_required_reference(value):
                found.append(f"{name}: environment {key}")
        for where, args in (("command", service.get("command")),
                            ("entrypoint", service.get("entrypoint")),
                            ("healthcheck", (service.get("healthcheck") or {}).get("test"))):
            words = as_list(args)
            for flag, arg in itertools.pairwise(words):
                if flag in SECRET_FLAGS and not is_required_reference(arg):
                    found.append(f"{name}: {where} {flag}")
            found += [f"{name}: {where} {flag}=" for word in words
                      for flag in SECRET_FLAGS if word.startswith(flag + "=")
                      and not is_required_reference(word.split("=", 1)[1])]

    def strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from strings(v, f"{path}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from strings(v, f"{path}[{i}]")
        elif isinstance(value, str):
            yield path, value

    for path, text in strings(dict(spec), ""):
        masked, refs = mask_references(text)
        for url in re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"']+", masked):
            userinfo = re.match(r"[a-z][a-z0-9+.-]*://([^/@]*)@", url)
            if userinfo and ":" in userinfo.group(1):  # user:password@host
                password = re.fullmatch("\x00(\\d+)\x00", userinfo.group(1).partition(":")[2])
                if not (password and is_required_reference(refs[int(password.group(1))])):
                    found.append(f"{path}: password in a URL")
        for name, op in references(text):
            if SECRET_NAME.search(name) and op in (":-", "-", ":+", "+"):
                found.append(f"{path}: ${{{name}}} has a default")
    return found


# ---------------------------------------------------------------------------------------
# the Compose file against the Compose Specification


def schema_errors(spec: Any) -> list[str]:
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(spec)]


def test_the_vendored_schema_is_the_recorded_one() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    note = (ROOT / "tests" / "data" / "compose-spec.md").read_text()
    assert SCHEMA_SHA256 in note and "v2.16.2" in note
    Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))


def test_compose_file_is_valid_as_written_and_interpolated() -> None:
    spec = compose()
    assert schema_errors(spec) == []
    assert schema_errors(interpolate(spec, FAKE_ENV)) == []


@pytest.mark.parametrize("mistake", [
    "unknown service key", "bad depends_on condition", "bad restart type", "unknown top key",
    "volume as number",
])
def test_the_schema_catches_mistakes(mistake: str) -> None:
    """The validation is not vacuous: a broken copy of the file is refused."""
    spec = copy.deepcopy(compose())
    services = spec["services"]
    if mistake == "unknown service key":
        services["grafana"]["imagee"] = "grafana/grafana"
    elif mistake == "bad depends_on condition":
        services["worker-1"]["depends_on"]["kafka"]["condition"] = 42
    elif mistake == "bad restart type":
        services["worker-1"]["restart"] = ["always"]
    elif mistake == "unknown top key":
        spec["servicez"] = {}
    else:
        services["kafka"]["volumes"] = [9092]
    assert schema_errors(spec)


def test_every_secret_is_required_from_the_environment() -> None:
    spec = compose()
    assert interpolate(spec, FAKE_ENV)  # all set: fine
    for name in SECRETS:
        for env in ({k: v for k, v in FAKE_ENV.items() if k != name}, {**FAKE_ENV, name: ""}):
            with pytest.raises(MissingVariable, match=name):
                interpolate(spec, env)
    # ... and nothing else is needed
    used = {n for n, op in references(COMPOSE.read_text()) if op in (":?", "?")}
    assert used == set(SECRETS)


def test_no_literal_secret_in_the_compose_file() -> None:
    assert literal_secrets(compose()) == []


@pytest.mark.parametrize(("where", "bad"), [
    ("env", "hunter2"),
    ("env", "${GRADER_API_TOKEN:-changeme}"),
    ("env", "${GRADER_API_TOKEN}"),  # optional: an empty token would pass
    ("url", "redis://:hunter2@redis:6379/0"),
    ("url", "redis://:${REDIS_PASSWORD:-pw}@redis:6379/0"),
    ("command", "hunter2"),
])
def test_the_secret_check_finds_literals(where: str, bad: str) -> None:
    spec = copy.deepcopy(compose())
    if where == "env":
        spec["services"]["worker-1"]["environment"]["GRADER_API_TOKEN"] = bad
    elif where == "url":
        spec["services"]["worker-2"]["environment"]["GRADER_REDIS_URL"] = bad
    else:
        command = spec["services"]["redis"]["command"]
        command[command.index("--requirepass") + 1] = bad
    assert literal_secrets(spec)


# ---------------------------------------------------------------------------------------
# the services


def test_kafka_is_apache_kafka_in_kraft_mode_at_the_tested_version() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{kafka_version()}"  # deploy/kafka/pom.xml
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voter == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert "CONTROLLER://:9093" in env["KAFKA_LISTENERS"].split(",")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")


def test_two_workers_for_apache_kafka_with_a_token_and_redis() -> None:
    spec = compose()
    workers = worker_services(spec)
    assert sorted(workers) == ["worker-1", "worker-2"]
    redis_command = as_list(spec["services"]["redis"]["command"])
    requirepass = redis_command[redis_command.index("--requirepass") + 1]
    redis_var = references(requirepass)[0][0]
    assert redis_var == "REDIS_PASSWORD"
    assert references(environment(spec["services"]["redis"])["REDISCLI_AUTH"])[0][0] == redis_var
    for name, worker in workers.items():
        env = environment(worker)
        assert env["GRADER_BROKER_QUIRKS"] == "none", name
        assert env["GRADER_KAFKA_URL"] == "kafka://kafka:9092", name
        # every interface of the container: grader refuses that without a token (docs/api.md)
        assert env["GRADER_WEB_HOST"] == "0.0.0.0", name
        assert is_required_reference(env["GRADER_API_TOKEN"]), name
        url = urlparse(interpolate(env["GRADER_REDIS_URL"], FAKE_ENV))
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379), name
        assert url.password == FAKE_ENV[redis_var], name
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert env["GRADER_WEB_PORT"] in worker["expose"]
    # each worker's data dir is its own container's (docs/deploy.md): no shared volume
    assert not any(w.get("volumes") for w in workers.values())


def test_the_prometheus_config_the_stack_mounts_scrapes_both_workers() -> None:
    spec = compose()
    prometheus = spec["services"]["prometheus"]
    flags = dict(arg.split("=", 1) for arg in as_list(prometheus["command"]) if "=" in arg)
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    source = mounted[flags["--config.file"]]
    assert (ROOT / source).resolve() == PROMETHEUS_CONFIG
    config = load_yaml(PROMETHEUS_CONFIG)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "grader"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    want = {f"{name}:{environment(w)['GRADER_WEB_PORT']}"
            for name, w in worker_services(spec).items()}
    assert len(want) == 2 and targets == want


def test_promtool_checks_the_prometheus_config() -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not os.access(promtool, os.X_OK):  # scripts/install-debian-packages installs it
        if in_ci():
            pytest.fail("promtool (Debian's prometheus package) is needed in CI")
        pytest.skip("promtool not installed (Debian's prometheus package, "
                    "scripts/install-debian-packages)")
    done = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


# ---------------------------------------------------------------------------------------
# Grafana: provisioning, dashboard, docs


def test_grafana_is_provisioned_with_the_data_source_and_the_dashboard() -> None:
    spec = compose()
    grafana = spec["services"]["grafana"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[(ROOT / source).resolve()] = target
    assert mounts[DATASOURCES.parent] == "/etc/grafana/provisioning/datasources"
    assert mounts[PROVIDERS.parent] == "/etc/grafana/provisioning/dashboards"
    [provider] = load_yaml(PROVIDERS)["providers"]
    assert provider["type"] == "file"
    assert mounts[DASHBOARD.parent] == provider["options"]["path"]
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    assert is_required_reference(environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"])

    [source] = load_yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    url = urlparse(source["url"])
    assert url.hostname == "prometheus" and url.port == 9090
    assert "prometheus" in spec["services"]
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape

    # every panel, query and variable names the provisioned data source by its uid
    dash = dashboard()
    used = [p["datasource"] for p in panels(dash)]
    used += [t["datasource"] for p in panels(dash) for t in p.get("targets", [])]
    used += [v["datasource"] for v in dash["templating"]["list"] if "datasource" in v]
    assert used and all(d == {"type": "prometheus", "uid": source["uid"]} for d in used)


def test_the_dashboard_has_the_panels_of_the_issue() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    queries = panel_queries(dash)
    for metric in REQUIRED_METRICS:
        assert any(re.search(rf"\b{metric}\b", q) for _t, _r, q in queries), metric
    exprs = [q for _t, _r, q in queries]
    assert any(q.startswith("sum by (policy, tier) (grader_customers{") for q in exprs)
    assert any(q.startswith("sum by (direction) (rate(grader_tier_changes_total{")
               for q in exprs)
    assert any(q.startswith("sum by (code) (rate(grader_rejections_total{") for q in exprs)
    latency = [q for q in exprs if "grader_event_to_tier_change_seconds_bucket" in q]
    assert sorted(q.split(",")[0] for q in latency) == ["histogram_quantile(0.5",
                                                        "histogram_quantile(0.99"]
    for title, ref, q in queries:
        promql(q)  # only known variables
        assert 'job="grader"' in q, (title, ref)
    # panels do not overlap on Grafana's 24-column grid
    cells: set[tuple[int, int]] = set()
    for panel in panels(dash):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


def test_the_dashboard_uses_only_documented_metrics() -> None:
    documented = set(re.findall(r"^\| `(grader_\w+)`", METRICS_DOC.read_text(), re.M))
    histograms = {"grader_event_to_tier_change_seconds", "grader_batch_seconds"}
    assert histograms <= documented
    for title, _ref, q in panel_queries(dashboard()):
        for name in re.findall(r"\bgrader_\w+", q):
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name.startswith(
                tuple(histograms)) else name
            assert base in documented, (title, name)
    job = [j["job_name"] for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]]
    assert "grader" in job


def test_docs_deploy_lists_every_panel_and_query() -> None:
    doc = DEPLOY_DOC.read_text()
    for title, _ref, q in panel_queries(dashboard()):
        assert title in doc, title
        assert q in doc, q
    for name in SECRETS:
        assert name in doc
