"""The one error root of grader. The CLI turns any GraderError into one line."""

from __future__ import annotations


class GraderError(Exception):
    """A user-facing error: bad file, bad setting, bad argument.

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``.
    """

    exit_code = 2


class WorkerStop(GraderError):
    """A running worker must stop (cleanly: what it stored is committed, nothing else).

    ``str(error)`` is the one line it says why, ``exit_code`` its exit status.
    """


class DataDirFull(WorkerStop):
    """The worker's data dir has no space left: the local store cannot be written."""

    exit_code = 4


class PolicyError(GraderError):
    """A policy file that cannot be loaded; the message names file, line and key."""


class SettingsError(GraderError):
    """A setting that is missing or invalid; the message names the setting."""


def one_line(text: str) -> str:
    """``text`` with each newline or other unprintable character escaped (``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
