"""Find the line of a key in TOML source, so policy errors can name it.

tomllib reports positions only for syntax errors; for semantic errors we look
the key up in the text: the ``index``-th ``[[table]]`` (or ``[table]``) block,
then the first line in it that assigns ``needle`` or contains it.
"""

from __future__ import annotations

import re

from grader.core.errors import PolicyError, one_line

_HEADER = re.compile(r"\s*\[\[?\s*([A-Za-z0-9_.\-\"]+)\s*\]\]?")


class Locator:
    """Line lookup over one TOML text."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source
        self.headers = [
            (i, m.group(1))
            for i, line in enumerate(self.lines)
            if (m := _HEADER.match(line)) and not line.lstrip().startswith("#")
        ]

    def block(self, table: str | None, index: int | None) -> tuple[int, int]:
        """The (start, end) line range of a table block; top level when table is None."""
        starts = [i for i, name in self.headers if name == table]
        if table is None or not starts:
            first = self.headers[0][0] if self.headers else len(self.lines)
            return 0, first
        start = starts[min(index or 0, len(starts) - 1)]
        later = [i for i, _ in self.headers if i > start]
        return start, later[0] if later else len(self.lines)

    def line_of(
        self,
        key: str,
        table: str | None = None,
        index: int | None = None,
        needle: str | None = None,
    ) -> int | None:
        """1-based line of ``needle`` (default: the last part of ``key``), if found."""
        start, end = self.block(table, index)
        want = needle if needle is not None else key.split(".")[-1].split("[")[0]
        assign = re.compile(rf"\s*{re.escape(want)}\s*=")
        for i in range(start, end):
            if assign.match(self.lines[i]):
                return i + 1
        for i in range(start, end):
            if want in self.lines[i]:
                return i + 1
        return start + 1 if table is not None and start < len(self.lines) else None

    def error(
        self,
        key: str,
        message: str,
        table: str | None = None,
        index: int | None = None,
        needle: str | None = None,
    ) -> PolicyError:
        """A PolicyError naming file, line and key."""
        line = self.line_of(key, table, index, needle)
        where = f"{self.source}:{line}" if line else self.source
        return PolicyError(one_line(f"{where}: {key}: {message}"))  # a key may hold "\n"
