"""grader as a user installs it: a wheel built from this checkout, installed into a fresh
virtual environment, run from an empty folder, far from the source tree.

The wheel is built the way a user or the Dockerfile builds it (``pip wheel .``): on a
machine with a C compiler its grading core is compiled with mypyc (setup.py), and this
module checks that it is, that it grades exactly as the checkout's pure-Python core,
and that the unit tests pass on it. Then the installed commands run from an empty
folder: `policy check` of each preset, `replay` (equal to the checkout's), and a worker
against a real broker that grades events and answers /metrics.

The compose stack's wiring (docker-compose.yml, the Dockerfile's runtime stage,
deploy/prometheus.yml) is run the same way, since no Docker engine runs here: each
worker service's command with exactly that service's environment, its hosts mapped to
a Kafka, a Redis with the stack's password and a Prometheus started by the test, the
secrets from a test env file (docs/deploy.md).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from grader.devtools.kafkabroker import KafkaBroker
from grader.devtools.services import free_port, start_redis
from grader.settings import DEFAULTS, PASSWORD_VARIABLE, preset_names
from tests.integration.conftest import ROOT, Server, WorkerProcess, quirks, read_topic, wait_for
from tests.integration.test_dashboard import need_prometheus, run_prometheus
from tests.unit.test_compose import (
    PROMETHEUS_CONFIG,
    SECRETS,
    as_list,
    compose,
    environment,
    interpolate,
    worker_services,
)

pytestmark = pytest.mark.integration

AS_OF = "2026-11-22T00:00:00+08:00"
SMALL = ROOT / "tests" / "data" / "small.jsonl"
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Installed:
    """A fresh venv with the wheel (and the test tools of its dev extra) installed."""

    venv: Path
    wheel: Path

    @property
    def grader(self) -> Path:
        return self.venv / "bin" / "grader"

    def env(self, **extra: str) -> dict[str, str]:
        """A user's environment: no GRADER_* setting, no PYTHONPATH, the venv first."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GRADER_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.update(extra)
        return env

    def run(self, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.grader), *args], cwd=cwd, env=self.env(**extra),
                              capture_output=True, text=True, timeout=120, check=False)


def has_compiler() -> bool:
    return shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is not None


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel as a user would (compiled where a compiler is), install it."""
    where = tmp_path_factory.mktemp("installed")
    env = {k: v for k, v in os.environ.items() if k != "GRADER_MYPYC"}
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(where / "wheels"),
         str(ROOT)], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    [wheel] = (where / "wheels").glob("grader-*.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c",
         str(ROOT / "constraints.txt"), f"{wheel}[dev]"],
        env=env, capture_output=True, text=True, timeout=600, check=False)
    assert install.returncode == 0, install.stderr[-3000:]
    return Installed(venv, wheel)


def test_a_wheel_built_with_a_compiler_has_the_compiled_core(installed: Installed,
                                                             tmp_path: Path) -> None:
    assert has_compiler(), "these machines and CI have gcc; without it the wheel is pure"
    assert re.fullmatch(r"grader-[\d.]+-cp3\d+-cp3\d+-linux_\w+\.whl", installed.wheel.name)
    result = installed.run("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "grader 0.1.0 (core: compiled)"
    # and it runs from site-packages, not from this checkout
    where = subprocess.run(
        [str(installed.venv / "bin" / "python"), "-c",
         "import grader.core.grading; print(grader.core.grading.__file__)"],
        cwd=tmp_path, env=installed.env(), capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed.venv)) and where.strip().endswith(".so"), where


def test_a_pure_wheel_on_request(tmp_path: Path) -> None:
    """GRADER_MYPYC=0 builds a pure-Python wheel, for any platform."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        env={**os.environ, "GRADER_MYPYC": "0"}, capture_output=True, text=True, timeout=600,
        check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.glob("*.whl")] == ["grader-0.1.0-py3-none-any.whl"]


def test_every_preset_checks_from_an_empty_folder(installed: Installed, tmp_path: Path) -> None:
    names = preset_names()
    assert names == sorted(p.stem for p in (ROOT / "grader" / "policies").glob("*.toml"))
    for name in names:
        result = installed.run("policy", "check", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"policy {name} version "), result.stdout
        assert str(installed.venv) in result.stdout.splitlines()[0]  # the packaged file


def test_replay_from_an_empty_folder_equals_the_checkouts(installed: Installed,
                                                          tmp_path: Path) -> None:
    """The compiled core of the wheel and the checkout's pure-Python core write the same
    files, on the fixture and on a few thousand generated events."""
    from bench.generate_events import generate

    generated = tmp_path / "generated.jsonl"
    generated.write_bytes(b"".join(line + b"\n" for line in
                                   generate(400, 6000, seed=3, as_of=AS_OF)))
    for events in (SMALL, generated):
        args = ["replay", str(events), "--as-of", AS_OF, "--policy", "abc-100",
                "--policy", "sabcd-weighted", "--policy", "stars"]
        empty = tmp_path / f"empty-{events.stem}"
        empty.mkdir()
        mine = installed.run(*args, "--out", "out", cwd=empty)
        assert mine.returncode == 0, mine.stderr
        theirs = subprocess.run([sys.executable, "-m", "grader", *args, "--out",
                                 str(tmp_path / f"checkout-{events.stem}")],
                                cwd=ROOT, capture_output=True, text=True, timeout=120,
                                check=False)
        assert theirs.returncode == 0, theirs.stderr
        assert mine.stderr.splitlines()[-1] == theirs.stderr.splitlines()[-1]
        for name in ("tiers.csv", "dead-letters.jsonl"):
            assert (empty / "out" / name).read_bytes() == \
                (tmp_path / f"checkout-{events.stem}" / name).read_bytes(), name
        assert changes(empty / "out") == changes(tmp_path / f"checkout-{events.stem}")
        assert len(changes(empty / "out")) > (5 if events == SMALL else 1000)


def changes(out: Path) -> list[dict[str, Any]]:
    """The tier changes of a replay, without the time they were written."""
    return [{k: v for k, v in json.loads(line).items() if k != "emitted_at"}
            for line in (out / "tier-changes.jsonl").read_text().splitlines()]


def test_the_unit_tests_pass_on_the_compiled_core(installed: Installed) -> None:
    """The rest of the suite runs this checkout's pure-Python core; here the installed
    wheel's compiled one runs the unit tests (the tests come from the checkout, grader
    from site-packages: pytest's append import mode puts the checkout after it). Two
    files test the source tree's development tooling and deploy files, not the core."""
    result = subprocess.run(
        [str(installed.venv / "bin" / "pytest"), "-x", "-p", "no:cacheprovider",
         "--import-mode=append", "tests/unit", "--ignore=tests/unit/test_compose.py",
         "--ignore=tests/unit/test_kafkabroker.py"],
        cwd=ROOT, env=installed.env(), capture_output=True, text=True, timeout=900,
        check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "grader core: compiled" in result.stdout
    last = result.stdout.splitlines()[-1]  # "===== 1939 passed in 70.80s ====="
    assert re.fullmatch(r"=+ \d+ passed in .* =+", last), result.stdout[-500:]


def test_an_installed_worker_grades_and_answers_metrics(installed: Installed, broker: Server,
                                                       tmp_path: Path) -> None:
    """`grader worker` and `grader produce` of the installed copy, from an empty folder,
    with nothing but settings in the environment."""
    prefix = f"inst{secrets.token_hex(3)}."
    port = free_port()
    settings = {"GRADER_KAFKA_URL": broker.url, "GRADER_TOPIC_PREFIX": prefix,
                "GRADER_PARTITIONS": "2", "GRADER_POLICIES": "abc-100,stars",
                "GRADER_WEB_PORT": str(port), "GRADER_BROKER_QUIRKS": quirks(broker),
                "GRADER_REDIS_URL": "", "GRADER_LIVE_TICKS": "0"}
    empty = tmp_path / "empty"
    empty.mkdir()
    worker = WorkerProcess(installed.env(**settings), tmp_path / "worker.log",
                           command=[str(installed.grader), "worker"], cwd=empty)
    try:
        worker.wait_ready(60)
        produced = installed.run("produce", str(SMALL), cwd=empty, **settings)
        assert produced.returncode == 0, produced.stderr
        graded = installed.run("replay", str(SMALL), "--as-of", AS_OF, "--policy", "abc-100",
                               "--policy", "stars", "--out", "replayed", cwd=tmp_path)
        assert graded.returncode == 0, graded.stderr
        wanted = {line.split(",")[0] for line in
                  (tmp_path / "replayed" / "tiers.csv").read_text().splitlines()[1:]}
        assert len(wanted) == 4, wanted
        wait_for(lambda: {r.key.decode() for r in
                          read_topic(broker, prefix + "customer-tiers")} >= wanted,
                 60, "every customer graded by the installed worker")
        metrics = http_get(port, "/metrics")
        assert re.search(r'^grader_events_total\{[^}]*outcome="applied"[^}]*\} [1-9]', metrics,
                         re.M), metrics[:2000]
    finally:
        assert worker.stop() == 0
    assert "Traceback" not in worker.log()
    assert set(os.listdir(empty)) <= {"data"}, os.listdir(empty)  # only its data dir


def http_get(port: int, path: str, token: str | None = None) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


# ---------------------------------------------------------------------------------------
# the compose stack's wiring, from the installed wheel


def dockerfile_runtime() -> tuple[list[str], dict[str, str], list[str]]:
    """The runtime (last) stage of the Dockerfile: ENTRYPOINT, ENV, and COPY sources of
    every stage that come from the build context."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    runtime = lines[stages[-1]:]
    entrypoint = next(json.loads(line.split(None, 1)[1]) for line in runtime
                      if line.upper().startswith("ENTRYPOINT "))
    env: dict[str, str] = {}
    for line in runtime:
        if line.upper().startswith("ENV "):
            env.update(word.split("=", 1) for word in shlex.split(line.split(None, 1)[1]))
    copied = [src for line in lines if line.upper().startswith("COPY ")
              and "--from=" not in line for src in shlex.split(line)[1:-1]]
    return entrypoint, env, copied


def test_every_file_the_stack_and_image_name_exists() -> None:
    """A bind mount, a build context or a COPY source that is not in the repository."""
    spec = compose()
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source}"
        if "build" in service:
            assert (ROOT / service["build"] / "Dockerfile").is_file(), name
    _, _, copied = dockerfile_runtime()
    assert copied, "the Dockerfile copies nothing from the build context"
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile: COPY {source}"


def test_every_grader_variable_of_the_stack_is_a_setting() -> None:
    """A misnamed GRADER_* variable would be ignored by grader: none is."""
    known = {f"GRADER_{key.upper()}" for key in DEFAULTS} | {PASSWORD_VARIABLE}
    _, image_env, _ = dockerfile_runtime()
    for name, service in worker_services(compose()).items():
        for key in [*environment(service), *image_env]:
            if key.startswith("GRADER_"):
                assert key in known, f"{name}: {key} is no grader setting"


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    """The secrets of a test env file, read back as Compose reads .env (NAME=value)."""
    path = tmp_path / ".env"
    path.write_text("".join(f"{name}={secrets.token_hex(16)}\n" for name in SECRETS))
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


@pytest.mark.parametrize("broker", ["kafka"], indirect=True)
def test_the_compose_stacks_workers_run_as_wired(installed: Installed, broker: Server,
                                                 stack_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    """Both worker services, started as Compose would start them, grade; Prometheus
    scrapes them with the stack's config; the customer endpoint answers with the token."""
    assert isinstance(broker, KafkaBroker)
    spec = interpolate(compose(), stack_env)
    entrypoint, image_env, _ = dockerfile_runtime()
    services = worker_services(spec)
    assert sorted(services) == ["worker-1", "worker-2"]
    redis = start_redis(extra_args=["--requirepass", stack_env["REDIS_PASSWORD"]])
    hosts = {"kafka:9092": broker.bootstrap, "redis:6379": f"127.0.0.1:{redis.port}"}
    ports = {name: free_port() for name in services}
    workers: dict[str, WorkerProcess] = {}
    envs: dict[str, dict[str, str]] = {}
    try:
        for name, service in services.items():
            env = {**image_env, **environment(service)}
            for key, value in env.items():
                for host, here in hosts.items():
                    value = value.replace(host, here)
                env[key] = value
            # the container's own /tmp and its own network namespace, here a folder and a port
            assert env.pop("GRADER_DATA_DIR").startswith("/tmp/")
            env["GRADER_DATA_DIR"] = str(tmp_path / name / "data")
            assert env["GRADER_WEB_HOST"] == "0.0.0.0"
            env["GRADER_WEB_HOST"], env["GRADER_WEB_PORT"] = "127.0.0.1", str(ports[name])
            workdir = tmp_path / name / "app"
            workdir.mkdir(parents=True)
            command = [str(installed.venv / "bin" / entrypoint[0]), *entrypoint[1:],
                       *as_list(service.get("command"))]
            envs[name] = env
            workers[name] = WorkerProcess(installed.env(**env), tmp_path / f"{name}.log",
                                          command=command, cwd=workdir)
        for worker in workers.values():
            worker.wait_ready(90)
        settings = envs["worker-1"]
        produced = installed.run("produce", str(SMALL), cwd=tmp_path, **settings)
        assert produced.returncode == 0, produced.stderr
        token = stack_env["GRADER_API_TOKEN"]
        for name in services:  # any worker answers for any customer, with the token only
            body = wait_for(lambda n=name: customer(ports[n], "C-A", token), 60,
                            f"C-A graded, from {name}")
            assert set(body["policies"]) == set(settings["GRADER_POLICIES"].split(","))
            with pytest.raises(urllib.error.HTTPError) as denied:
                http_get(ports[name], "/customers/C-A")
            denied.value.close()
            assert denied.value.code == 401
        config = scrape_as_wired(tmp_path / "prometheus.yml", ports)
        binary = need_prometheus()
        with run_prometheus(binary, config, tmp_path / "prometheus-data",
                            tmp_path / "prometheus.log") as prometheus:
            def scraped() -> bool:
                up = prometheus.vector('up{job="grader"}')
                return len(up) == 2 and all(float(s["value"][1]) == 1 for s in up)

            wait_for(scraped, 60, "both workers scraped by Prometheus")
            graded = prometheus.vector('sum(grader_events_total{job="grader"})')
            assert graded and float(graded[0]["value"][1]) > 0
        # the stack's healthcheck, run as the container would run it
        for name, service in services.items():
            check = [word.replace(":6066", f":{ports[name]}")
                     for word in service["healthcheck"]["test"][1:]]
            check[0] = str(installed.venv / "bin" / check[0])
            subprocess.run(check, check=True, timeout=30, env=installed.env())
    finally:
        codes = {name: worker.stop() for name, worker in workers.items()}
        redis.stop()
    assert codes == {name: 0 for name in services}
    for worker in workers.values():
        log = worker.log()
        assert "Traceback" not in log
        for secret in stack_env.values():
            assert secret not in log


def customer(port: int, customer_id: str, token: str) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = json.loads(http_get(port, f"/customers/{customer_id}", token))
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 503):
            return None
        raise
    return body


def scrape_as_wired(path: Path, ports: dict[str, int]) -> Path:
    """deploy/prometheus.yml as the stack mounts it, each target's service host:port
    mapped to where that service runs here; nothing else changed."""
    text = PROMETHEUS_CONFIG.read_text()
    config = yaml.safe_load(text)
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "grader"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(t.split(":")[0] for t in targets) == sorted(ports), targets
    for target in targets:
        service, _, port = target.partition(":")
        assert port == "6066", target  # the container port every worker listens on
        text = text.replace(target, f"127.0.0.1:{ports[service]}")
    path.write_text(text)
    return path
