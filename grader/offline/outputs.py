"""Output files written whole or not at all.

Each file is written to a temporary file in its own folder and flushed to
disk; only when every one is whole are they renamed over the old ones. A
reader (or a run that fails half-way, say on a full disk) finds the old
complete file or the new complete one, never a cut one. An output that could
not be replaced is refused before anything is written (check_replaceable).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from grader.core.errors import GraderError

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def check_replaceable(folder: Path, names: Iterable[str]) -> None:
    """Raise GraderError, naming the file, if one of ``names`` in ``folder`` (created
    when missing) could not be written or replaced. Writes nothing."""
    for name in names:
        why = _why_not_replaceable(folder, folder / name)
        if why is not None:
            raise GraderError(f"{folder / name}: {why} (nothing written)")


def _why_not_replaceable(folder: Path, path: Path) -> str | None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder will be created in ``existing``
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"its folder {existing} is not writable"
    if existing != folder:
        return None
    if path.is_dir():
        return "is a folder"
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & _WRITE_BITS):
        return "is read-only"  # even for root, who could replace it
    return None


def write_whole(folder: Path, contents: Mapping[str, Iterable[bytes]]) -> None:
    """Write each file of ``contents`` (its name -> its bytes, in pieces) into
    ``folder`` (created when missing), replacing the old ones only once all are whole.

    Raises GraderError naming the file when one cannot be written; the old
    files are then left as they were and no temporary file is left behind.
    """
    check_replaceable(folder, contents)
    written: list[tuple[Path, Path]] = []  # (temporary file, its final name)
    target = folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, pieces in contents.items():
            target = folder / name
            written.append((_written_aside(target, pieces), target))
        for temporary, target in written:
            os.replace(temporary, target)
        _sync(folder)
    except OSError as exc:
        for temporary, _target in written:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise GraderError(f"{target}: {exc.strerror or exc}; the output files in {folder} are "
                          "as they were") from None


def _written_aside(target: Path, pieces: Iterable[bytes]) -> Path:
    """A new temporary file next to ``target`` holding ``pieces``, flushed to disk."""
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.writelines(pieces)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary


def _sync(folder: Path) -> None:
    """Flush ``folder``'s entries (the renames) to disk."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
