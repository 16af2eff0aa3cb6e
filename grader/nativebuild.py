"""``python -m grader.nativebuild [--if-stale | --status]``: compile the grading core with mypyc.

See grader/nativecore.py for what is compiled, where it goes and when it is
used, and docs/performance.md for why. Needs mypy (the dev extra) and a C
compiler. Concurrent builds are safe: each compiles in its own temporary
directory and renames a complete build into place; ``current`` is replaced
atomically, and a build that does not match the sources is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from grader.nativecore import (
    COMPILED,
    CORE,
    CURRENT,
    GROUP,
    MANIFEST,
    PACKAGE,
    ext_suffix,
    manifest,
    mismatch,
    source_hashes,
    status,
)

KEEP_OLD_BUILDS_FOR = 600.0  # seconds: a process may be between its check and its imports


class BuildError(Exception):
    """The build could not be made; the message says why."""


def build(package: Path = PACKAGE) -> Path:
    """Compile CORE of ``package`` into a new build directory and make it current."""
    from mypyc.build import mypycify  # the dev extra (mypy) brings mypyc
    from setuptools import Distribution

    compiled = package / COMPILED.name
    compiled.mkdir(exist_ok=True)
    sources = source_hashes(package)
    with tempfile.TemporaryDirectory(prefix="build-", dir=compiled) as tmp:
        work = Path(tmp)
        cwd = os.getcwd()
        os.chdir(package.parent)  # mypy names the modules from here (grader.scoring, ...)
        try:
            extensions = mypycify(
                [f"{package.name}/{m}.py" for m in CORE],
                opt_level="3",
                group_name=GROUP,
                target_dir=str(work / "c"),
            )
            dist = Distribution({"name": "grader-native", "ext_modules": extensions})
            command = dist.get_command_obj("build_ext")
            command.build_lib = str(work / "lib")
            command.build_temp = str(work / "tmp")
            command.parallel = os.cpu_count() or 1
            dist.run_command("build_ext")
        finally:
            os.chdir(cwd)
        if source_hashes(package) != sources:
            raise BuildError("a core source changed during the build; build again")
        out = work / "out"
        out.mkdir()
        for built in (work / "lib" / package.name).glob(f"*{ext_suffix()}"):
            shutil.copy2(built, out / built.name)
        body = manifest(sources)
        (out / MANIFEST).write_bytes(body)
        final = compiled / hashlib.sha256(body).hexdigest()[:16]
        try:
            out.rename(final)
        except OSError:
            if not (final / MANIFEST).is_file():  # else: the same build is already there
                raise
    _make_current(compiled, final)
    _prune(compiled, keep=final)
    return final


def _make_current(compiled: Path, build: Path) -> None:
    """Point ``current`` at ``build`` atomically; the build it replaces is stamped now,
    so that _prune counts its grace period from when it stopped being current."""
    with contextlib.suppress(OSError):  # no previous build, or it was removed
        name = (compiled / CURRENT).read_text().strip()
        if name and Path(name).name == name and compiled / name != build:
            os.utime(compiled / name)
    pointer = compiled / f"{CURRENT}.{os.getpid()}"
    pointer.write_text(build.name + "\n")
    pointer.replace(compiled / CURRENT)


def _prune(compiled: Path, keep: Path) -> None:
    """Remove builds that stopped being current over KEEP_OLD_BUILDS_FOR seconds ago
    (never ``keep`` or another build's temporary directory)."""
    now = time.time()
    for entry in compiled.iterdir():
        if (entry.is_dir() and entry != keep and not entry.name.startswith("build-")
                and now - entry.stat().st_mtime > KEEP_OLD_BUILDS_FOR):
            shutil.rmtree(entry, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Build, build only when stale, or print whether this process runs the compiled core."""
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--if-stale"], ["--status"]):
        print("usage: python -m grader.nativebuild [--if-stale | --status]", file=sys.stderr)
        return 2
    if args == ["--status"]:
        print(status())
        return 0
    if args == ["--if-stale"] and mismatch(honour_env=False) is None:
        return 0
    try:
        final = build()
    except BuildError as exc:
        print(f"grader.nativebuild: {exc}", file=sys.stderr)
        return 1
    why = mismatch(honour_env=False)
    if why is not None:
        print(f"grader.nativebuild: the build did not take: {why}", file=sys.stderr)
        return 1
    print(f"grader.nativebuild: compiled {len(CORE)} core modules into {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
