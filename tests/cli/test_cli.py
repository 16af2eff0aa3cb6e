"""The `grader` command, run for real as a subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
AS_OF = "2026-11-22T00:00:00+08:00"


def grader(
    *args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grader", *map(str, args)],
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_replay_small_fixture(tmp_path: Path) -> None:
    result = grader(
        "replay",
        DATA / "small.jsonl",
        "--as-of",
        AS_OF,
        "--policy",
        "abc-100",
        "--policy",
        "stars",
        "--out",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "rejected=3" in result.stderr and "duplicate=1" in result.stderr
    assert "after-as-of=1" in result.stderr and "ignored=" not in result.stderr
    rows = list(csv.reader((tmp_path / "tiers.csv").read_text().splitlines()))
    assert rows == [
        ["customer_id", "policy", "tier", "score"],
        ["C-A", "abc-100", "A", "100.00"],
        ["C-A", "stars", "6-star", "24000.00"],
        ["C-B", "abc-100", "C", "50.00"],
        ["C-B", "stars", "5-star", "6000.00"],
        ["C-C", "abc-100", "B", "60.00"],
        ["C-C", "stars", "3-star", "50.00"],
        ["C-D", "abc-100", "C", "100.00"],
        ["C-D", "stars", "6-star", "24000.00"],
    ]
    dead = [
        orjson.loads(line) for line in (tmp_path / "dead-letters.jsonl").read_bytes().splitlines()
    ]
    assert [(d["line"], d["code"], d["field"]) for d in dead] == [
        (10, "wrong_currency", "currency"),
        (11, "bad_json", None),
        (12, "missing_field", "customer_id"),
    ]
    assert dead[1]["raw"] == '{"event_id":"x2","type":"sale",'
    changes = [
        orjson.loads(line) for line in (tmp_path / "tier-changes.jsonl").read_bytes().splitlines()
    ]
    by_customer = [(c["customer_id"], c["policy"], c["to_tier"], c["direction"]) for c in changes]
    assert by_customer == [
        ("C-A", "abc-100", "A", "initial"),
        ("C-A", "stars", "6-star", "initial"),
        ("C-B", "abc-100", "B", "initial"),  # the open invoice is 0 days old on the sale day
        ("C-B", "stars", "5-star", "initial"),
        ("C-B", "abc-100", "C", "down"),  # paid in full 45 days later: 20 points, not 30
        ("C-C", "abc-100", "B", "initial"),
        ("C-C", "stars", "quasi-star", "initial"),
        ("C-C", "stars", "3-star", "up"),
        ("C-D", "abc-100", "A", "initial"),
        ("C-D", "stars", "6-star", "initial"),
        ("C-D", "abc-100", "C", "down"),
    ]
    pin = changes[-1]
    assert pin["cause"] == {"kind": "override", "event_id": "d1"} and pin["sequence"] == 2


def test_replay_defaults_to_the_configured_policy(tmp_path: Path) -> None:
    result = grader("replay", DATA / "small.jsonl", "--as-of", AS_OF, "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    policies = {
        row["policy"] for row in csv.DictReader((tmp_path / "tiers.csv").read_text().splitlines())
    }
    assert policies == {"abc-100"}


def test_replay_policy_given_as_a_file(tmp_path: Path) -> None:
    result = grader(
        "replay",
        DATA / "small.jsonl",
        "--as-of",
        AS_OF,
        "--policy",
        ROOT / "grader" / "policies" / "stars.toml",
        "--out",
        tmp_path / "o",
    )
    assert result.returncode == 0, result.stderr
    assert "C-C,stars,3-star,50.00" in (tmp_path / "o" / "tiers.csv").read_text()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["replay", "missing.jsonl", "--as-of", AS_OF, "--out", "OUT"],
            ["missing.jsonl", "not found"],
        ),
        (
            ["replay", "tests/data/small.jsonl", "--as-of", "2026-11-22", "--out", "OUT"],
            ["--as-of", "RFC 3339"],
        ),
        (
            [
                "replay",
                "tests/data/small.jsonl",
                "--as-of",
                AS_OF,
                "--policy",
                "gold",
                "--out",
                "OUT",
            ],
            ["unknown policy 'gold'"],
        ),
        (
            [
                "replay",
                "tests/data/small.jsonl",
                "--as-of",
                AS_OF,
                "--policy",
                "nope/x.toml",
                "--out",
                "OUT",
            ],
            ["nope/x.toml", "not found"],
        ),
        (
            [
                "replay",
                "tests/data/small.jsonl",
                "--as-of",
                AS_OF,
                "--workers",
                "0",
                "--out",
                "OUT",
            ],
            ["--workers"],
        ),
        (["replay", "tests/data/small.jsonl", "--out", "OUT"], ["--as-of"]),
        (["frobnicate"], ["invalid choice"]),
        (["policy", "check", "gold"], ["unknown policy 'gold'"]),
    ],
)
def test_bad_arguments_give_one_line(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    one_line_error(grader(*[str(tmp_path / "out") if a == "OUT" else a for a in args]), *needles)


def test_bad_policy_file_names_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    text = (ROOT / "grader" / "policies" / "abc-100.toml").read_text()
    bad.write_text(text.replace('["<= 30", 30]', '["< 30", 30]'))
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if '"> 30 and' in t)
    one_line_error(
        grader("policy", "check", bad), f"bad.toml:{line}:", "lines[1].bands", "leave a gap"
    )
    one_line_error(
        grader(
            "replay",
            DATA / "small.jsonl",
            "--as-of",
            AS_OF,
            "--policy",
            bad,
            "--out",
            tmp_path / "o",
        ),
        f"bad.toml:{line}:",
    )


def test_bad_setting_gives_one_line(tmp_path: Path) -> None:
    env_cmd = [
        sys.executable,
        "-m",
        "grader",
        "replay",
        str(DATA / "small.jsonl"),
        "--as-of",
        AS_OF,
        "--out",
        str(tmp_path),
    ]
    import os

    result = subprocess.run(
        env_cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GRADER_POLICIES": "abc-100,nope"},
    )
    one_line_error(result, "unknown policy 'nope'")
    result = subprocess.run(
        env_cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "GRADER_PARTITIONS": "many"},
    )
    one_line_error(result, "partitions", "GRADER_PARTITIONS")


def test_policy_check_prints_tiers_and_lines() -> None:
    result = grader("policy", "check", "abc-100")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "policy abc-100 version 1" in out and "OK" in out
    assert "A            >= 80" in out and "C            otherwise" in out
    assert "monthly_avg_sales(12)" in out and "> 10000 and < 20000" in out
    assert grader("policy", "check", "grader/policies/stars.toml").stdout.count("-star") >= 6


def generated_events(tmp_path: Path) -> Path:
    """21,000 generated lines (2,000 customers, duplicates and bad lines) in a file."""
    sys.path.insert(0, str(ROOT))
    from bench.generate_events import generate

    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(generate(2000, 21000, seed=5, as_of=AS_OF)) + b"\n")
    return events


def replay_outputs(
    events: Path, out: Path, workers: str, env: dict[str, str] | None = None
) -> dict[str, object]:
    """The three output files of a replay with the three presets (changes without emitted_at)."""
    result = grader(
        "replay",
        events,
        "--as-of",
        AS_OF,
        "--policy",
        "abc-100",
        "--policy",
        "sabcd-weighted",
        "--policy",
        "stars",
        "--workers",
        workers,
        "--out",
        out,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    changes = [orjson.loads(x) for x in (out / "tier-changes.jsonl").read_bytes().splitlines()]
    warnings = [orjson.loads(x) for x in (out / "tier-warnings.jsonl").read_bytes().splitlines()]
    return {
        "tiers.csv": (out / "tiers.csv").read_bytes(),
        "at-risk.csv": (out / "at-risk.csv").read_bytes(),
        "dead-letters.jsonl": (out / "dead-letters.jsonl").read_bytes(),
        "changes": [{k: v for k, v in c.items() if k != "emitted_at"} for c in changes],
        "warnings": [{k: v for k, v in w.items() if k != "emitted_at"} for w in warnings],
    }


def test_parallel_replay_writes_the_same_files(tmp_path: Path) -> None:
    events = generated_events(tmp_path)
    one = replay_outputs(events, tmp_path / "w1", "1")
    two = replay_outputs(events, tmp_path / "w2", "2")
    assert one == two
    assert one["tiers.csv"].count(b"\n") > 2000  # type: ignore[attr-defined]
    assert one["at-risk.csv"].count(b"\n") > 100  # type: ignore[attr-defined]
    assert len(one["warnings"]) > 10


# -- issue 19: one line, exit 2, never a traceback ---------------------------------------

NOWHERE = "kafka://127.0.0.1:1"  # nothing listens: a command that got this far would say so


@pytest.mark.parametrize(
    ("command", "env", "needles"),
    [
        (["redis-sync"], {"GRADER_REDIS_URL": "redis://localhost:abc/0"},
         ["(GRADER_REDIS_URL)", "port 'abc'"]),
        (["worker"], {"GRADER_REDIS_URL": "redis://localhost:99999/0"},
         ["(GRADER_REDIS_URL)", "port '99999'"]),
        (["worker"], {"GRADER_REDIS_URL": "redis://[::1"}, ["(GRADER_REDIS_URL)", "IPv6"]),
        (["tick", "--as-of", AS_OF], {"GRADER_KAFKA_URL": "kafka://[::1:9092"},
         ["(GRADER_KAFKA_URL)", "'[::1:9092' is not host:port"]),
        (["produce", str(DATA / "small.jsonl")], {"GRADER_KAFKA_URL": "kafka://h:x"},
         ["(GRADER_KAFKA_URL)", "port 'x'"]),
        (["worker"], {"GRADER_DATA_DIR": "README.md", "GRADER_KAFKA_URL": NOWHERE},
         ["(GRADER_DATA_DIR)", "README.md is not a directory"]),
        (["worker"], {"GRADER_API_TOKEN": "s3cret\n", "GRADER_KAFKA_URL": NOWHERE},
         ["(GRADER_API_TOKEN)", "the value is not shown"]),
        (["worker"], {"GRADER_API_TOKEN": "s3 cret", "GRADER_KAFKA_URL": NOWHERE},
         ["(GRADER_API_TOKEN)"]),
    ],
)
def test_bad_settings_are_one_line_exit_2_before_any_connection(
    command: list[str], env: dict[str, str], needles: list[str]
) -> None:
    result = grader(*command, env=env)
    one_line_error(result, *needles)  # not "connecting to Kafka ...": settings come first
    assert result.returncode == 2 and "s3" not in result.stderr


def deep_policy(tmp_path: Path) -> Path:
    path = tmp_path / "deep.toml"
    text = (ROOT / "grader" / "policies" / "abc-100.toml").read_text()
    path.write_text(text.replace('version = "1"', 'version = "2"')
                    + "x = " + "[" * 5000 + "]" * 5000 + "\n")
    return path


def test_a_policy_nested_thousands_deep_is_one_line(tmp_path: Path) -> None:
    deep = deep_policy(tmp_path)
    for command in (["policy", "check", deep],
                    ["whatif", DATA / "small.jsonl", "--as-of", AS_OF, "--current", "abc-100",
                     "--candidate", deep, "--out", tmp_path / "out"]):
        result = grader(*command)
        one_line_error(result, "deep.toml: invalid TOML: nested deeper than 16 levels")
        assert result.returncode == 2


def test_a_policy_with_100000_tiers_is_refused_at_once(tmp_path: Path) -> None:
    huge = tmp_path / "huge.toml"
    huge.write_text('[[lines]]\nmetric = "sales(12)"\nbands = [["<= 0", 0], ["> 0", 1]]\n'
                    + "".join(f'[[tiers]]\nname = "T{i}"\nmin = ">= {100_000 - i}"\n'
                              for i in range(100_000)) + '[[tiers]]\nname = "last"\n')
    result = grader("policy", "check", huge)
    one_line_error(result, "huge.toml: invalid TOML:", "more than the 1,000,000 read")
    assert result.returncode == 2


def test_output_into_a_closed_pipe_is_a_quiet_exit() -> None:
    """`grader policy check abc-100 | head -1`: the reader is gone before grader writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child starts: its first write fails
    try:
        done = subprocess.run([sys.executable, "-m", "grader", "policy", "check", "abc-100"],
                              cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120, check=False)
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 1
