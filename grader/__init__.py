"""grader: a streaming customer tier grader. See README.md and docs/."""

from grader import nativecore as _nativecore

__version__ = "0.1.0"

# The compiled core (grader/nativecore.py) goes first when it matches the sources.
_nativecore.activate(__path__)
