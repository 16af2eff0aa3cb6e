"""Reading an events file (JSON lines) with a bound on what one line may cost.

A line longer than MAX_EVENT_BYTES is never held whole nor parsed: it is
read through in chunks, keeping its first RAW_KEPT bytes, its size and its
SHA-256 (a :class:`LongLine`), and becomes a ``too_long`` dead letter capped
as the stream caps its dead letters. So memory does not grow with the length
of a line, whatever the file holds (a 2 GB sparse file is one line of NULs).

Why 1 MiB is the largest valid event (docs/replay.md): the parser ignores
fields it does not know and takes numbers and fractions of seconds of any
length, so it sets no bound of its own; the stream does. `grader produce`
(aiokafka's default ``max_request_size``) and a Kafka broker at its
default ``message.max.bytes`` carry no message over 1 MiB, so no longer event
can be graded by the workers, and replay must agree with them. The string
fields of one event take under 32 KiB even written entirely in ``\\uXXXX``
escapes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from grader.core.events import (
    RAW_KEPT,
    Event,
    ParseContext,
    Rejection,
    original_fields,
    parse_event,
    truncated_fields,
)

MAX_EVENT_BYTES = 1024 * 1024  # the largest line parsed, without its line end
_READ = MAX_EVENT_BYTES + 2  # a line of MAX_EVENT_BYTES and its "\r\n"
_LINE_ENDS = b"\r\n"  # stripped from the end of every line
_BUFFER = 1024 * 1024  # a smaller one makes reading a long line several times slower


@dataclass(frozen=True, slots=True)
class LongLine:
    """A line longer than MAX_EVENT_BYTES: its first RAW_KEPT bytes, size and SHA-256."""

    head: bytes
    size: int
    sha256: str

    def rejection(self) -> Rejection:
        """Why it is not parsed."""
        return Rejection("too_long", None,
                         f"the line is {self.size} bytes, longer than the largest event "
                         f"({MAX_EVENT_BYTES} bytes): not parsed")

    def original_fields(self) -> dict[str, Any]:
        """Its dead letter's ``raw_*`` fields, as the stream caps them."""
        return truncated_fields(self.head, self.size, self.sha256)


Line = bytes | LongLine  # a line of the events file, as read_lines gives it


def read_lines(path: Path) -> Iterator[Line]:
    """The lines of a file without their line ends; a line longer than
    MAX_EVENT_BYTES as a LongLine, read through in chunks of that size."""
    with path.open("rb", buffering=_BUFFER) as handle:
        while line := handle.readline(_READ):
            if len(line) == _READ and not line.endswith(b"\n"):
                yield _long_line(line, handle)
                continue
            line = line.rstrip(_LINE_ENDS)
            yield line if len(line) <= MAX_EVENT_BYTES else _long(line[:RAW_KEPT], len(line),
                                                                  hashlib.sha256(line))


def _long_line(first: bytes, handle: IO[bytes]) -> Line:
    """The rest of a line that starts with ``first`` (_READ bytes, no line end yet).

    A run of line ends is only known to end the line once the line's "\\n" is
    read, so it is held back (``pending``) until then. Since ``first`` is
    longer than MAX_EVENT_BYTES, a line that these make shorter is a prefix of it.
    """
    digest, size, pending = hashlib.sha256(), 0, b""
    chunk = first
    while True:
        ended = not chunk or chunk.endswith(b"\n")
        data = pending + chunk
        body = data.rstrip(_LINE_ENDS)
        digest.update(body)
        size += len(body)
        if ended:
            break
        pending = data[len(body):]
        chunk = handle.readline(_READ)
    if size <= MAX_EVENT_BYTES:
        return first[:size]
    return _long(first[:RAW_KEPT], size, digest)


def _long(head: bytes, size: int, digest: Any) -> LongLine:
    return LongLine(head, size, digest.hexdigest())


def parse_line(raw: Line, ctx: ParseContext) -> Event | Rejection:
    """``parse_event`` of a line; a LongLine is rejected without being parsed."""
    if isinstance(raw, LongLine):
        return raw.rejection()
    return parse_event(raw, ctx)


def original_line_fields(raw: Line) -> dict[str, Any]:
    """A rejected line's dead-letter ``raw_*`` fields, capped as the stream caps them."""
    if isinstance(raw, LongLine):
        return raw.original_fields()
    return original_fields(raw)
