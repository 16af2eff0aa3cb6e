"""grader: a streaming customer tier grader. See README.md and docs/."""

__version__ = "0.1.0"
