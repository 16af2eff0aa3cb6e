"""The compiled core is used only when its build matches the sources and this Python."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from grader import nativebuild, nativecore
from grader.nativecore import (
    CORE,
    DEPENDS,
    PURE_ENV,
    SHARED,
    check,
    ext_suffix,
    manifest,
    mismatch,
    source_hashes,
)
from tests.conftest import core_files, needs_compiled_core


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the core sources with a complete build of them (empty module files)."""
    for module in (*CORE, *DEPENDS):
        shutil.copy(nativecore.PACKAGE / f"{module}.py", tmp_path / f"{module}.py")
    build = tmp_path / "_compiled" / "b1"
    build.mkdir(parents=True)
    for module in (*CORE, SHARED):
        (build / f"{module}{ext_suffix()}").write_bytes(b"")
    (build / "manifest.json").write_bytes(manifest(source_hashes(tmp_path)))
    (tmp_path / "_compiled" / "current").write_text("b1\n")
    return tmp_path


def test_a_build_that_matches_is_used(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PURE_ENV, raising=False)
    assert check(package=package) == (None, package / "_compiled" / "b1")


@pytest.mark.parametrize("module", ["scoring", "policy"])
def test_an_edited_source_turns_the_build_off(package: Path, module: str) -> None:
    """A core module, or a module the compiled code was built against."""
    source = package / f"{module}.py"
    source.write_bytes(source.read_bytes() + b"\n# edited\n")
    assert "a core source changed" in str(mismatch(honour_env=False, package=package))


def test_a_missing_source_turns_the_build_off(package: Path) -> None:
    (package / "money.py").unlink()
    assert "a core source cannot be read" in str(mismatch(honour_env=False, package=package))


def test_a_missing_module_turns_the_build_off(package: Path) -> None:
    (package / "_compiled" / "b1" / f"metrics{ext_suffix()}").unlink()
    assert mismatch(honour_env=False, package=package) == "compiled module missing: metrics"


def test_a_build_for_another_python_is_not_used(package: Path) -> None:
    other = manifest(source_hashes(package)).replace(
        sys.implementation.cache_tag.encode(), b"cpython-399"
    )
    (package / "_compiled" / "b1" / "manifest.json").write_bytes(other)
    assert "built for another Python" in str(mismatch(honour_env=False, package=package))


@pytest.mark.parametrize(
    ("broken", "why"),
    [
        ("no current", "not built"),
        ("no manifest", "not built"),
        ("manifest not JSON", "manifest cannot be read"),
        ("current names a path", "does not name a build directory"),
    ],
)
def test_no_build_or_a_broken_one_means_pure_python(package: Path, broken: str, why: str) -> None:
    compiled = package / "_compiled"
    if broken == "no current":
        (compiled / "current").unlink()
    elif broken == "no manifest":
        (compiled / "b1" / "manifest.json").unlink()
    elif broken == "manifest not JSON":
        (compiled / "b1" / "manifest.json").write_bytes(b"{not json")
    else:
        (compiled / "current").write_text("../b1\n")
    assert why in str(mismatch(honour_env=False, package=package))


def test_the_environment_turns_the_build_off(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PURE_ENV, "1")
    assert mismatch(package=package) == f"{PURE_ENV} is set"
    assert mismatch(honour_env=False, package=package) is None


def test_pure_python_when_asked() -> None:
    *files, status = core_files({PURE_ENV: "1"})  # tests.conftest
    assert all(f.endswith(".py") for f in files), files
    assert status == f"pure Python ({PURE_ENV} is set)"


def test_every_core_module_loads_compiled_when_built() -> None:
    needs_compiled_core()
    *files, status = core_files({PURE_ENV: "0"})
    build = check(honour_env=False)[1]
    assert build is not None and build.parent == nativecore.COMPILED
    assert all(Path(f).parent == build and f.endswith(ext_suffix()) for f in files), files
    assert status == "compiled"


def test_a_replaced_build_is_kept_for_a_while_then_removed(tmp_path: Path) -> None:
    """The grace period counts from when a build stopped being current, not from its build."""
    long_ago = time.time() - 2 * nativebuild.KEEP_OLD_BUILDS_FOR
    for name in ("old", "older", "new", "build-running"):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (long_ago, long_ago))
    (tmp_path / "current").write_text("old\n")
    nativebuild._make_current(tmp_path, tmp_path / "new")
    nativebuild._prune(tmp_path, keep=tmp_path / "new")
    assert (tmp_path / "current").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build-running", "current", "new", "old"]
    os.utime(tmp_path / "old", (long_ago, long_ago))  # replaced long ago
    nativebuild._prune(tmp_path, keep=tmp_path / "new")
    assert not (tmp_path / "old").exists()
