"""CI never turns a failure into a skip (STYLE.md): every guard asks one helper.

``CI`` counts when set to anything non-empty (``true``, ``1``, ...): a guard
that compared it with ``"true"`` skipped, under ``CI=1``, tests that CI must
fail. So: tests/conftest.py's ``in_ci()`` is the only Python that reads
``CI``, every test that can skip asks it first, the shell scripts test
``-n "${CI:-}"``, and ``.ci/run`` sets ``CI`` for the run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT, in_ci

#: Functions that may skip without asking in_ci(), and why (none).
MAY_SKIP: set[str] = set()
SHELL = [ROOT / ".ci" / "run", *sorted((ROOT / "scripts").iterdir())]


@pytest.mark.parametrize(("value", "ci"), [
    ("true", True), ("1", True), ("yes", True), ("True", True), ("", False), (None, False),
])
def test_any_non_empty_ci_is_ci(monkeypatch: pytest.MonkeyPatch, value: str | None,
                               ci: bool) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def python_files() -> list[Path]:
    return sorted((ROOT / "tests").rglob("*.py"))


def test_only_in_ci_reads_the_ci_variable() -> None:
    reads = re.compile(r"""(environ\.get|getenv|environ\[)\(?\s*["']CI["']""")
    found = [f"{path.relative_to(ROOT)}:{n}"
             for path in python_files() if path != Path(__file__)
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if reads.search(line)]
    assert found == ["tests/conftest.py:" + str(_in_ci_line())], found


def _in_ci_line() -> int:
    lines = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, 1) if 'environ.get("CI")' in line)


def _calls(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        or (isinstance(n.func, ast.Name) and n.func.id == name)) for n in ast.walk(node))


def test_every_skip_asks_in_ci_first() -> None:
    unguarded = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            skips = _calls(func, "skip") or _calls(func, "importorskip")
            if skips and not _calls(func, "in_ci") and func.name not in MAY_SKIP:
                unguarded.append(f"{path.relative_to(ROOT)}: {func.name}")
    assert not unguarded, f"skips without asking in_ci(): {unguarded}"


@pytest.mark.parametrize("path", SHELL, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_scripts_take_any_non_empty_ci(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for line in text.splitlines():
        if re.search(r"\$\{?CI\b", line) and not line.lstrip().startswith("#"):
            assert '[ -n "${CI:-}" ]' in line or 'export CI="${CI:-true}"' in line, line


def test_ci_run_sets_ci() -> None:
    assert 'export CI="${CI:-true}"' in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
