"""Files grader reads at run time, shipped inside the package (package data).

The topic definitions and the input events' JSON Schemas (``topics/``) and the
preset policies (``policies/``) are read through ``importlib.resources``, so
an installed grader finds them wherever it is installed and whatever the
working directory; nothing is looked up beside the source tree.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

__all__ = ["packaged"]


def packaged(*parts: str) -> Traversable:
    """The package file or folder ``parts`` below ``grader/`` (e.g. "topics", "topics.toml")."""
    node = files("grader")
    for part in parts:
        node = node / part
    return node
