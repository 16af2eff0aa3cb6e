"""The build: the grading core compiled with mypyc into the wheel, as mypy and black do.

Everything else about the package is in pyproject.toml. This file only adds
the compiled modules (docs/performance.md, "Compiled core"):

- building a wheel (``pip wheel .``, ``python -m build``) compiles the core
  modules (CORE below) with mypyc when a C compiler is there; without one the
  build says so on stderr and yields a pure-Python wheel;
- an editable install of a checkout (``pip install -e .``, scripts/setup)
  stays pure Python, so an edited source is what runs;
- ``GRADER_MYPYC=1`` compiles in either case (an editable install then builds
  the modules in place, beside their sources; a C compiler is required), and
  ``GRADER_MYPYC=0`` builds a pure wheel.

``grader --version`` says which core a process runs.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup

SWITCH = "GRADER_MYPYC"
#: Compiled together (one mypyc group): calls between them are native calls. The modules
#: they import from grader.core (policy, errors, tomlpos) stay Python; the core is type-checked
#: against them.
CORE = ("rational", "money", "clock", "events", "metricref", "state", "metrics", "scoring",
        "tiering", "grading", "atrisk")
#: The setuptools commands that build modules; others (egg_info, dist_info, sdist) need no C.
BUILDING = {"bdist_wheel", "build", "build_ext", "editable_wheel", "develop", "install"}


def _compile() -> bool:
    """Whether this run compiles the core (see the module's doc)."""
    if not BUILDING & set(sys.argv[1:]):
        return False
    switch = os.environ.get(SWITCH, "")
    if switch not in ("", "0", "1"):
        raise SystemExit(f"setup.py: {SWITCH} must be 0 or 1, not {switch!r}")
    if switch == "0" or (switch == "" and "editable_wheel" in sys.argv):
        return False
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        if switch == "1":
            raise SystemExit(f"setup.py: {SWITCH}=1 but no C compiler ({compiler}) is found")
        print(f"setup.py: no C compiler ({compiler}): building a pure-Python grader "
              "(about 25% slower; docs/performance.md)", file=sys.stderr)
        return False
    return True


def _extensions() -> list[object]:
    if not _compile():
        return []
    from mypyc.build import mypycify  # mypy is a build requirement (pyproject.toml)

    return list(mypycify([f"grader/core/{m}.py" for m in CORE], opt_level="3",
                         group_name="grader_core"))


setup(ext_modules=_extensions())
