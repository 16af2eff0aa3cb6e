"""``python -m grader.nativebuild [--if-stale | --status]``: compile the grading core with mypyc.

See grader/nativecore.py for what is compiled and when it is used, and
docs/performance.md for why. Needs mypy (the dev extra) and a C compiler.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grader.nativecore import (
    COMPILED,
    CORE,
    GROUP,
    MANIFEST,
    PACKAGE,
    ext_suffix,
    manifest,
    mismatch,
    source_hashes,
    status,
)


def build() -> None:
    """Compile CORE into COMPILED (replacing what is there) and write the manifest last."""
    from mypyc.build import mypycify  # the dev extra (mypy) brings mypyc
    from setuptools import Distribution

    sources = source_hashes()  # before compiling: an edit during the build makes it stale
    with tempfile.TemporaryDirectory(prefix="grader-mypyc-") as tmp:
        work = Path(tmp)
        cwd = os.getcwd()
        os.chdir(PACKAGE.parent)  # mypy names the modules from here (grader.scoring, ...)
        try:
            extensions = mypycify(
                [f"grader/{m}.py" for m in CORE],
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
        shutil.rmtree(COMPILED, ignore_errors=True)
        COMPILED.mkdir()
        for built in (work / "lib" / "grader").glob(f"*{ext_suffix()}"):
            shutil.copy2(built, COMPILED / built.name)
    MANIFEST.write_bytes(manifest(sources))


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
    build()
    why = mismatch(honour_env=False)
    if why is not None:
        print(f"grader.nativebuild: the build did not take: {why}", file=sys.stderr)
        return 1
    print(f"grader.nativebuild: compiled {len(CORE)} core modules into {COMPILED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
