"""The grading core compiled with mypyc: built on request, used only while it matches its source.

The modules of CORE are plain Python and always work as such. ``python -m
grader.nativebuild`` (run by scripts/setup) compiles them with mypyc into a
build directory ``grader/_compiled/<digest>/`` that is complete before it is
renamed into place and never changed after; ``grader/_compiled/current``
names the build in use, and the build's manifest holds the SHA-256 of each
source it was compiled from (CORE and the grader modules they import,
DEPENDS, whose types are compiled in) and the Python it is for.

At import, grader/__init__.py calls activate(): when the manifest matches this
Python and the current bytes of every one of those sources, the build goes
first on grader's package path and every CORE module is imported from it at
once (so a later rebuild cannot leave a process with half the core of one
build); otherwise (never built, a source edited since, another Python, or
GRADER_PURE_PYTHON=1) nothing changes and the pure-Python modules run. So a
compiled module never runs code older than the source next to it.

Why and what it gives: docs/performance.md. grader/nativebuild.py builds;
this module is never compiled.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import sysconfig
from pathlib import Path

import orjson

PACKAGE = Path(__file__).resolve().parent
COMPILED = PACKAGE / "_compiled"
CURRENT = "current"  # in COMPILED: the name of the build directory in use
MANIFEST = "manifest.json"  # in a build directory
# Compiled together (one mypyc group): calls between them are native calls.
CORE = (
    "rational",
    "money",
    "clock",
    "events",
    "metricref",
    "state",
    "metrics",
    "scoring",
    "tiering",
    "core",
)
# Not compiled, but the compiled code was type-checked and built against them.
DEPENDS = ("policy", "errors", "tomlpos")
GROUP = "grader.native"
SHARED = "native__mypyc"  # mypyc's shared library of the group (native__mypyc.*.so)
PURE_ENV = "GRADER_PURE_PYTHON"

_status = "not activated"


def status() -> str:
    """How this process runs the core: "compiled" or "pure Python (<why>)"."""
    return _status


def activate(package_path: list[str]) -> str:
    """Use the compiled core (see the module's doc) when it matches the sources."""
    global _status
    why, build = check()
    if build is None:
        _status = f"pure Python ({why})"
        return _status
    package_path.insert(0, str(build))
    for module in CORE:
        loaded = importlib.import_module(f"grader.{module}").__file__ or ""
        if Path(loaded).parent != build:  # only if the build vanished since check()
            raise ImportError(f"grader: grader.{module} loaded from {loaded}, not from the "
                              f"compiled core {build}; run with {PURE_ENV}=1 or rebuild")
    _status = "compiled"
    return _status


def mismatch(honour_env: bool = True, package: Path = PACKAGE) -> str | None:
    """Why the compiled core of ``package`` must not be used, or None when it may."""
    return check(honour_env, package)[0]


def check(honour_env: bool = True, package: Path = PACKAGE) -> tuple[str | None, Path | None]:
    """(None, the build directory) when the compiled core may be used, else (why, None)."""
    if honour_env and os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV} is set", None
    compiled = package / COMPILED.name
    try:
        name = (compiled / CURRENT).read_text().strip()
        if not name or Path(name).name != name:
            return f"{compiled / CURRENT} does not name a build directory", None
        build = compiled / name
        manifest = orjson.loads((build / MANIFEST).read_bytes())
    except FileNotFoundError:
        return "not built; run python -m grader.nativebuild", None
    except (OSError, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        return f"the build's manifest cannot be read: {exc}", None
    if not isinstance(manifest, dict) or manifest.get("abi") != abi():
        return f"built for another Python, this is {abi()}", None
    try:
        sources = source_hashes(package)
    except OSError as exc:
        return f"a core source cannot be read: {exc}", None
    if manifest.get("sources") != sources:
        return "a core source changed since the build; run python -m grader.nativebuild", None
    for module in (*CORE, SHARED):
        if not (build / (module + ext_suffix())).is_file():
            return f"compiled module missing: {module}", None
    return None, build


def ext_suffix() -> str:
    """The file name ending of this Python's extension modules."""
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def abi() -> str:
    """This Python's cache tag and extension suffix: a build is for one of these."""
    return f"{sys.implementation.cache_tag}{ext_suffix()}"


def source_hashes(package: Path = PACKAGE) -> dict[str, str]:
    """The SHA-256 of the source of each module of CORE and DEPENDS, by module name."""
    return {
        m: hashlib.sha256((package / f"{m}.py").read_bytes()).hexdigest()
        for m in (*CORE, *DEPENDS)
    }


def manifest(sources: dict[str, str]) -> bytes:
    """The manifest of a build of these sources (source_hashes()) for this Python."""
    return orjson.dumps({"abi": abi(), "sources": sources}, option=orjson.OPT_INDENT_2)
