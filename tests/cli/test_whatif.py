"""`grader whatif`: equal to `grader replay` run under each policy separately."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from bench.generate_events import generate
from tests.cli.test_cli import grader, one_line_error
from tests.conftest import ROOT

AS_OF = "2026-11-22T00:00:00+08:00"
ABC = (ROOT / "grader" / "policies" / "abc-100.toml").read_text()


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whatif") / "events.jsonl"
    path.write_bytes(b"\n".join(generate(300, 6000, seed=61, as_of=AS_OF, months=11)) + b"\n")
    return path


def policy_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def replayed(events: Path, policy: str, out: Path) -> dict[str, tuple[str, str]]:
    done = grader("replay", events, "--as-of", AS_OF, "--policy", policy, "--out", out)
    assert done.returncode == 0, done.stderr
    with (out / "tiers.csv").open() as handle:
        return {r["customer_id"]: (r["tier"], r["score"]) for r in csv.DictReader(handle)}


def read_csv(path: Path) -> list[list[str]]:
    with path.open() as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("candidate", ["moved-threshold", "stars", "renamed-tier"])
def test_whatif_equals_two_replays(events: Path, tmp_path: Path, candidate: str) -> None:
    if candidate == "moved-threshold":  # the next version of abc-100: A from 70 points
        text = ABC.replace('version = "1"', 'version = "2"').replace('min = ">= 80"',
                                                                    'min = ">= 70"')
        assert text != ABC
        candidate_arg = str(policy_file(tmp_path, "abc-100-v2.toml", text))
    elif candidate == "renamed-tier":  # same name, other tiers: graded in two passes
        text = ABC.replace('version = "1"', 'version = "3"').replace('name = "A"', 'name = "AA"')
        text = text.replace('support_priority = ["A", "B", "C"]',
                            'support_priority = ["AA", "B", "C"]')
        candidate_arg = str(policy_file(tmp_path, "abc-100-v3.toml", text))
    else:
        candidate_arg = "stars"
    done = grader("whatif", events, "--as-of", AS_OF, "--current", "abc-100",
                  "--candidate", candidate_arg, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    current = replayed(events, "abc-100", tmp_path / "r1")
    other = replayed(events, candidate_arg, tmp_path / "r2")
    assert set(current) == set(other)

    pairs = Counter((current[c][0], other[c][0]) for c in current)
    matrix = read_csv(tmp_path / "out" / "matrix.csv")
    assert matrix[0] == ["current_tier", "candidate_tier", "customers"]
    assert {(a, b): int(n) for a, b, n in matrix[1:]} == dict(pairs)
    current_order = ["A", "B", "C"]
    assert [current_order.index(a) for a, _b, _n in matrix[1:]] == \
        sorted(current_order.index(a) for a, _b, _n in matrix[1:])

    movers = read_csv(tmp_path / "out" / "movers.csv")
    assert movers[0] == ["customer_id", "current_tier", "candidate_tier", "current_score",
                         "candidate_score"]
    assert movers[1:] == [[c, current[c][0], other[c][0], current[c][1], other[c][1]]
                          for c in sorted(current) if current[c][0] != other[c][0]]

    assert f"({len(current)} customers)" in done.stdout
    # at-risk.csv is the candidate's, as replay writes it; the report counts both policies'.
    assert (tmp_path / "out" / "at-risk.csv").read_bytes() == \
        (tmp_path / "r2" / "at-risk.csv").read_bytes()
    for folder in ("r1", "r2"):
        ahead = [(date.fromisoformat(row[3]) - date(2026, 11, 22)).days
                 for row in read_csv(tmp_path / folder / "at-risk.csv")[1:]]
        counts = [sum(days <= n for days in ahead) for n in (30, 90)]
        assert f"{counts[0]} within 30 days, {counts[1]} within 90 days" in done.stdout
    assert done.stdout.count(" within 30 days") == 2
    for tier, n in Counter(t for t, _s in current.values()).items():
        assert f"{tier} {n}" in done.stdout
    if candidate == "moved-threshold":
        moved = len(movers) - 1
        assert moved > 0, "the moved threshold moves someone"
        assert all(m[1:3] == ["B", "A"] for m in movers[1:])  # a lower bar for A only
        assert f"up {moved}, down 0, same {len(current) - moved}" in done.stdout


def test_bad_arguments_are_one_line(events: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    abc = ROOT / "grader" / "policies" / "abc-100.toml"
    copy = policy_file(tmp_path, "copy.toml", ABC)
    usd = policy_file(tmp_path, "usd.toml", ABC.replace('currency = "CNY"', 'currency = "USD"')
                      .replace('version = "1"', 'version = "9"'))
    broken = policy_file(tmp_path, "broken.toml", "name = [")
    cases = [
        (["--current", str(abc), "--candidate", "abc-100"], "the same policy file"),
        (["--current", "abc-100", "--candidate", str(copy)], "give the candidate a new version"),
        (["--current", "abc-100", "--candidate", str(usd)], "currency USD"),
        (["--current", "abc-100", "--candidate", str(broken)], "broken.toml"),
        (["--current", "abc-100", "--candidate", "no-such-policy"], "no-such-policy"),
    ]
    for args, needle in cases:
        one_line_error(grader("whatif", events, "--as-of", AS_OF, *args, "--out", out), needle)
    one_line_error(grader("whatif", tmp_path / "missing.jsonl", "--as-of", AS_OF, "--current",
                          "abc-100", "--candidate", "stars", "--out", out), "missing.jsonl")
    one_line_error(grader("whatif", events, "--as-of", "yesterday", "--current", "abc-100",
                          "--candidate", "stars", "--out", out), "--as-of")
    assert not out.exists()
