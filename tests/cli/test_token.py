"""`grader token add|list|remove` and the worker's refusal of a bad tokens file, run for
real as subprocesses (GRADING.md sections 6 and 7; docs/api.md, "Access")."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from grader.web.access import read_tokens_file
from tests.cli.test_cli import grader, one_line_error
from tests.conftest import ROOT

TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def env_for(path: Path, **extra: str) -> dict[str, str]:
    return {"GRADER_CONFIG_DIR": str(ROOT / "config"), "GRADER_API_TOKENS_FILE": str(path),
            "GRADER_POLICIES": "abc-100,stars", "GRADER_API_TOKEN": "", **extra}


def add(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return grader("token", "add", *args, env=env_for(path))


def test_add_prints_the_token_alone_and_stores_only_its_digest(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    desk = add(path, "desk-1", "--scope", "tier")
    assert desk.returncode == 0, desk.stderr
    token = desk.stdout.removesuffix("\n")
    assert TOKEN.fullmatch(token) and desk.stdout == token + "\n"  # alone, for scripts
    assert token not in desk.stderr and "desk-1" in desk.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and hashlib.sha256(token.encode()).hexdigest() in text
    audit = add(path, "audit", "--scope", "detail", "--detail-up-to", "B")
    assert audit.returncode == 0 and audit.stdout.strip() != token
    listed = grader("token", "list", env=env_for(path))
    assert listed.returncode == 0 and listed.stdout == "desk-1\ttier\t-\naudit\tdetail\tB\n"
    assert token not in listed.stdout + listed.stderr
    assert [e.caller.name for e in read_tokens_file(path)] == ["desk-1", "audit"]
    removed = grader("token", "remove", "desk-1", env=env_for(path))
    assert removed.returncode == 0 and removed.stdout == ""
    assert grader("token", "list", env=env_for(path)).stdout == "audit\tdetail\tB\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_two_tokens_are_never_the_same(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    tokens = {add(path, f"c{i}", "--scope", "tier").stdout for i in range(3)}
    assert len(tokens) == 3


@pytest.mark.parametrize(("args", "needles"), [
    (["add", "desk", "--scope", "tier", "--detail-up-to", "B"],
     ["--detail-up-to: only with --scope detail"]),
    (["add", "desk", "--scope", "detail", "--detail-up-to", "Z"],
     ["--detail-up-to 'Z': not a tier of the support policy (A, B, C)"]),
    (["add", "bad name", "--scope", "tier"], ["name 'bad name'"]),
    (["add", "api-token", "--scope", "tier"], ["name 'api-token'"]),
    (["add", "desk", "--scope", "admin"], ["invalid choice: 'admin'"]),
    (["remove", "nobody"], ["no caller 'nobody'"]),
])
def test_bad_token_commands_are_one_line(tmp_path: Path, args: list[str],
                                         needles: list[str]) -> None:
    path = tmp_path / "tokens.toml"
    one_line_error(grader("token", *args, env=env_for(path)), *needles)
    assert not path.exists()


def test_add_twice_with_one_name_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    assert add(path, "desk", "--scope", "tier").returncode == 0
    before = path.read_bytes()
    one_line_error(add(path, "desk", "--scope", "detail"), "a caller 'desk' exists already")
    assert path.read_bytes() == before


def test_token_needs_the_setting(tmp_path: Path) -> None:
    one_line_error(grader("token", "list", env=env_for(tmp_path / "x", GRADER_API_TOKENS_FILE="")),
                   "setting api_tokens_file (GRADER_API_TOKENS_FILE): not set")


SHA = hashlib.sha256(b"t").hexdigest()


@pytest.mark.parametrize(("text", "mode", "needle"), [
    (f'[callers.desk]\nsha256 = "{SHA}"\nscope = "tier"\n', 0o644,
     "group or others may read or write it (mode 0644)"),
    (f'[callers.desk]\nsha256 = "{SHA}"\nscope = "tier"\n', 0o640,
     "group or others may read or write it (mode 0640)"),
    ("[callers.desk\n", 0o600, "not TOML"),
    (f'[callers.a]\nsha256 = "{SHA}"\nscope = "tier"\n[callers.b]\nsha256 = "{SHA}"\n'
     'scope = "tier"\n', 0o600, "the same sha256 as another caller"),
    (f'[callers.a]\nsha256 = "{SHA}"\nscope = "root"\n', 0o600, "scope must be tier or detail"),
    (f'[callers.a]\nsha256 = "{SHA}"\nscope = "detail"\ndetail_up_to = "S"\n', 0o600,
     "detail_up_to 'S' is not a tier (the support policy's tiers: A, B, C)"),
    (f'[callers.a]\nsha256 = "{SHA}"\nscope = "tier"\ntoken = "plain-secret"\n', 0o600,
     "'token' is not a key"),
])
def test_the_worker_refuses_a_bad_tokens_file_before_any_connection(
        tmp_path: Path, text: str, mode: int, needle: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(text)
    path.chmod(mode)
    started = time.monotonic()
    done = grader("worker", env=env_for(path, GRADER_KAFKA_URL="kafka://127.0.0.1:1",
                                        GRADER_DATA_DIR=str(tmp_path / "data")))
    assert time.monotonic() - started < 20
    one_line_error(done, f"grader: error: tokens file {path}: ", needle)
    assert "plain-secret" not in done.stderr
    assert done.returncode == 2


def test_the_worker_refuses_a_missing_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    done = grader("worker", env=env_for(path, GRADER_KAFKA_URL="kafka://127.0.0.1:1",
                                        GRADER_DATA_DIR=str(tmp_path / "data")))
    one_line_error(done, f"tokens file {path}: cannot read it: No such file or directory")


def test_a_tokens_file_opens_a_non_loopback_web_host(tmp_path: Path) -> None:
    """Off loopback, a tokens file is as good as GRADER_API_TOKEN: the worker gets past the
    check (and stops at the unreachable broker instead)."""
    path = tmp_path / "tokens.toml"
    assert add(path, "desk", "--scope", "tier").returncode == 0
    done = grader("worker", env=env_for(path, GRADER_KAFKA_URL="kafka://127.0.0.1:1",
                                        GRADER_WEB_HOST="0.0.0.0",
                                        GRADER_DATA_DIR=str(tmp_path / "data")))
    assert done.returncode != 0 and "web_host" not in done.stderr
    assert "Kafka" in done.stderr
    open_ = grader("worker", env=env_for(tmp_path / "x", GRADER_API_TOKENS_FILE="",
                                         GRADER_KAFKA_URL="kafka://127.0.0.1:1",
                                         GRADER_WEB_HOST="0.0.0.0"))
    one_line_error(open_, "needs GRADER_API_TOKEN or GRADER_API_TOKENS_FILE")
