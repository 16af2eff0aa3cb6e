"""The grading core compiled with mypyc: built on request, used only while it matches its source.

The modules of CORE are plain Python and always work as such. ``python -m
grader.nativebuild`` (run by scripts/setup) compiles them with mypyc into
grader/_compiled/, next to a manifest of the SHA-256 of each module's source.
At import, grader/__init__.py calls activate(): when the manifest matches the
sources, this Python and this mypyc, the compiled directory goes first on
grader's package path, so ``import grader.scoring`` loads the compiled
module; otherwise (never built, a source edited since, another Python, or
GRADER_PURE_PYTHON=1) nothing changes and the pure-Python modules run. So a
compiled module can never run older code than the source next to it.

Why and what it gives: docs/performance.md. grader/nativebuild.py builds;
this module is never compiled.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

import orjson

PACKAGE = Path(__file__).resolve().parent
COMPILED = PACKAGE / "_compiled"
MANIFEST = COMPILED / "manifest.json"
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
GROUP = "grader.native"
SHARED = "native__mypyc"  # mypyc's shared library of the group (grader/native__mypyc.*.so)
PURE_ENV = "GRADER_PURE_PYTHON"

_status = "not activated"


def status() -> str:
    """How this process runs the core: "compiled" or "pure Python (<why>)"."""
    return _status


def activate(package_path: list[str]) -> str:
    """Put the compiled core first on ``package_path`` when it matches the sources."""
    global _status
    why = mismatch()
    if why is None:
        package_path.insert(0, str(COMPILED))
        _status = "compiled"
    else:
        _status = f"pure Python ({why})"
    return _status


def mismatch(honour_env: bool = True, package: Path = PACKAGE) -> str | None:
    """Why the compiled core of ``package`` must not be used, or None when it may."""
    if honour_env and os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"{PURE_ENV} is set"
    compiled = package / COMPILED.name
    manifest_path = compiled / MANIFEST.name
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        return "not built; run python -m grader.nativebuild"
    except orjson.JSONDecodeError:
        return f"{manifest_path} is not JSON"
    if not isinstance(manifest, dict) or manifest.get("abi") != abi():
        return f"built for another Python, this is {abi()}"
    if manifest.get("sources") != source_hashes(package):
        return "a core source changed since the build; run python -m grader.nativebuild"
    for module in (*CORE, SHARED):
        if not (compiled / (module + ext_suffix())).is_file():
            return f"compiled module missing: {module}"
    return None


def ext_suffix() -> str:
    """The file name ending of this Python's extension modules."""
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def abi() -> str:
    """This Python's cache tag and extension suffix: a build is for one of these."""
    return f"{sys.implementation.cache_tag}{ext_suffix()}"


def source_hashes(package: Path = PACKAGE) -> dict[str, str]:
    """The SHA-256 of each CORE module's source, by module name."""
    return {m: hashlib.sha256((package / f"{m}.py").read_bytes()).hexdigest() for m in CORE}


def manifest(sources: dict[str, str]) -> bytes:
    """The manifest of a build of these sources (source_hashes()) for this Python."""
    return orjson.dumps({"abi": abi(), "sources": sources}, option=orjson.OPT_INDENT_2)
