"""The docs' reference tables against the code they describe.

Each table is read as a user reads it; the code is asked, not copied:
settings from grader.settings, metrics from the registry a worker's
Telemetry builds, topics from grader.core.topology's loader (wherever
topics.toml lives). A setting, metric or topic added without its row, or a
row left behind, fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from grader.core.topology import load_topics
from grader.settings import DEFAULTS, PASSWORD_VARIABLE
from grader.web.metrics import Telemetry
from tests.conftest import ROOT

DOCS = ROOT / "docs"
#: Every setting with its default; the password is a setting read from the environment only.
SETTINGS = {**DEFAULTS, PASSWORD_VARIABLE.removeprefix("GRADER_").lower(): ""}
#: Read from the environment, but not settings (docs/settings.md says so).
NOT_SETTINGS = {"GRADER_CONFIG_DIR"}
SETTING_PARTITIONS = 7919  # a count no topic states, to tell "the setting" from a number
Row = dict[str, str]


def tables(path: Path) -> Iterator[list[Row]]:
    """Each Markdown table of ``path``: its rows as {header: cell} (``\\|`` is a pipe)."""
    block: list[list[str]] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            continue
        if len(block) > 2:
            header = [h.lower() for h in block[0]]
            yield [dict(zip(header, row, strict=False)) for row in block[2:]]
        block = []


def ticked(cell: str) -> list[str]:
    """The `code` spans of a cell."""
    return re.findall(r"`([^`]+)`", cell)


def default_shown(cell: str, default: str) -> bool:
    """A default is shown as `value`; an empty one in words (none, the first of ...)."""
    if default:
        return f"`{default}`" in cell
    return bool(cell) and not cell.startswith("`")


def test_every_setting_has_a_row_with_its_variable_and_default() -> None:
    [table] = [t for t in tables(DOCS / "settings.md") if t and "setting" in t[0]]
    rows = {ticked(row["setting"])[0]: row for row in table}
    assert sorted(rows) == sorted(SETTINGS), "docs/settings.md: one row per setting"
    for name, row in rows.items():
        assert ticked(row["environment"]) == [f"GRADER_{name.upper()}"], row
        assert default_shown(row["default"], SETTINGS[name]), (name, row["default"])


def test_every_table_with_a_default_column_agrees_with_the_code() -> None:
    variables = {f"GRADER_{name.upper()}": name for name in SETTINGS}
    checked = 0
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for table in tables(path):
            for row in table:
                if "default" not in row:
                    continue
                named = set(re.findall(r"GRADER_[A-Z_]+", " ".join(row.values())))
                unknown = named - set(variables) - NOT_SETTINGS
                assert not unknown, f"{path.name}: no such setting {unknown}: {row}"
                for variable in sorted(named - NOT_SETTINGS):
                    assert default_shown(row["default"], SETTINGS[variables[variable]]), \
                        f"{path.name}: {variable} defaults to {SETTINGS[variables[variable]]!r}"
                    checked += 1
    assert checked >= len(SETTINGS)


def registered_metrics() -> set[str]:
    """What a worker's /metrics names: counters with their _total, grader's own only."""
    names = set()
    for family in Telemetry().registry.collect():
        if family.name.startswith("grader_"):
            names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_metrics_md_lists_every_metric_the_worker_registers() -> None:
    [table] = [t for t in tables(DOCS / "metrics.md") if t and "metric" in t[0]]
    documented = {name for row in table for name in ticked(row["metric"])
                  if name.startswith("grader_")}
    assert documented == registered_metrics()
    types = {ticked(row["metric"])[0]: row["type"] for row in table}
    for family in Telemetry().registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        if name in types:
            assert types[name] == family.type, name


def test_streaming_md_lists_every_topic_of_topics_toml() -> None:
    specs = load_topics("", SETTING_PARTITIONS)
    [table] = [t for t in tables(DOCS / "streaming.md") if t and "topic" in t[0]
               and "cleanup" in t[0]]
    seen: set[str] = set()
    for row in table:
        names = [n for n in ticked(row["topic"]) if not n.startswith("{prefix}")]
        for name in names:
            assert name in specs, f"docs/streaming.md names {name!r}, not in topics.toml"
            spec = specs[name]
            assert row["role"].startswith(spec.role), (name, row["role"], spec.role)
            want = "setting" if spec.partitions == SETTING_PARTITIONS else str(spec.partitions)
            assert row["partitions"] == want, (name, row["partitions"])
            assert row["cleanup"].strip("*") == spec.cleanup_policy, (name, row["cleanup"])
            seen.add(name)
    assert seen == set(specs), f"missing from docs/streaming.md: {set(specs) - seen}"


def test_the_docs_name_no_stream_helper_that_does_not_exist() -> None:
    """A `Stream.name` the docs point to (tests/integration/conftest.py) exists."""
    source = (ROOT / "tests" / "integration" / "conftest.py").read_text(encoding="utf-8")
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for helper in re.findall(r"`Stream\.(\w+)`", path.read_text(encoding="utf-8")):
            assert f"    def {helper}(" in source, f"{path.name}: Stream.{helper} does not exist"


def test_the_desk_acl_of_the_docs_is_the_one_grader_gives() -> None:
    """docs/support-queues.md's ACL SETUSER line is grader.sinks.redis.desk_acl, which
    tests/integration/test_redis_security.py checks on a real redis-server."""
    from grader.sinks.redis import desk_acl

    text = (DOCS / "support-queues.md").read_text(encoding="utf-8")
    [line] = [ln for ln in text.splitlines() if ln.startswith("ACL SETUSER desk ")]
    assert line.split()[5:] == desk_acl("grader:")
