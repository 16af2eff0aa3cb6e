"""tomllib with bounds: a malformed or hostile file is refused at once.

tomllib recurses once per nested array or inline table (RecursionError past
a few hundred), reads integers with int() (ValueError past 4300 digits), and
takes time quadratic in a dotted key's length (``a.a.a...``: 20,000 parts
take 18 s). ``loads`` refuses each of these, and any nesting deeper than
MAX_DEPTH, with a one-line UnreadableToml, before or instead of the slow part.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from typing import Any

MAX_CHARS = 1_000_000
MAX_DEPTH = 16  # nested tables and arrays, and parts of a dotted key

# A key part, the dot between two parts, or any other character (a line at a time).
# A string's closing quote is optional, so that an unclosed one is read once, not once
# for each quote after it (which would be quadratic).
_TOKEN = re.compile(r"""([A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"?|'[^'\n]*'?)|([ \t]*\.[ \t]*)|.""",
                    re.DOTALL)


class UnreadableToml(ValueError):
    """Not TOML, or TOML beyond the bounds; the message is one line."""


def loads(text: str, parse_float: Callable[[str], Any] = float) -> dict[str, Any]:
    """``tomllib.loads``, raising UnreadableToml for invalid, too long or too deep text."""
    if len(text) > MAX_CHARS:
        raise UnreadableToml(f"{len(text):,} characters, more than the {MAX_CHARS:,} read")
    if _longest_dotted_key(text) > MAX_DEPTH:
        raise UnreadableToml(f"a dotted key of more than {MAX_DEPTH} parts")
    try:
        doc = tomllib.loads(text, parse_float=parse_float)
    except tomllib.TOMLDecodeError as exc:
        raise UnreadableToml(str(exc)) from None
    except RecursionError:
        raise UnreadableToml(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # int() refuses more digits than sys.get_int_max_str_digits()
        raise UnreadableToml("a number with too many digits") from None
    if _too_deep(doc):
        raise UnreadableToml(f"nested deeper than {MAX_DEPTH} levels")
    return doc


def _longest_dotted_key(text: str) -> int:
    """The most parts in a run ``part.part.part`` anywhere in ``text`` (strings too:
    an over-estimate, never an under-estimate), in one pass."""
    longest = parts = 0
    after_part = False
    for match in _TOKEN.finditer(text):
        part, dot = match.groups()
        if part is not None and not after_part:
            parts, after_part = (parts + 1 if parts else 1), True
        elif dot is not None and after_part:
            after_part = False
        else:
            parts, after_part = (1, True) if part is not None else (0, False)
        longest = max(longest, parts)
    return longest


def _too_deep(doc: dict[str, Any]) -> bool:
    """Whether tables and arrays nest more than MAX_DEPTH deep in ``doc`` (no recursion)."""
    todo: list[tuple[dict[str, Any] | list[Any], int]] = [(doc, 0)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DEPTH:
            return True
        children = value.values() if isinstance(value, dict) else value
        todo.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
