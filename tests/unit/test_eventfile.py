"""Reading an events file with a bound: a line longer than the largest event is never
held whole nor parsed, and its dead letter is capped as the stream caps one."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from grader.core.eventfile import MAX_EVENT_BYTES, LongLine, parse_line, read_lines
from grader.core.events import RAW_KEPT, original_fields
from grader.offline.replay import dead_letter
from tests.unit.test_replay_shards import CTX

MAX = MAX_EVENT_BYTES


def long(line: bytes) -> LongLine:
    return LongLine(line[:RAW_KEPT], len(line), hashlib.sha256(line).hexdigest())


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        (b"a\nb\r\n\r\nc", [b"a", b"b", b"", b"c"]),
        (b"x" * MAX + b"\r\n" + b"y", [b"x" * MAX, b"y"]),  # the largest event, parsed
        (b"x" * MAX, [b"x" * MAX]),  # ... without a line end
        (b"x" * (MAX + 1) + b"\ny", [long(b"x" * (MAX + 1)), b"y"]),
        (b"x" * (MAX + 1), [long(b"x" * (MAX + 1))]),
        (b"x" * (MAX + 1) + b"\r\n", [long(b"x" * (MAX + 1))]),
        (b"\0" * (3 * MAX + 7) + b"\n\n{}", [long(b"\0" * (3 * MAX + 7)), b"", b"{}"]),
        # line ends are stripped from the end as before, however many, across chunks
        (b"x" * MAX + b"\r" * (2 * MAX) + b"\n" + b"y", [b"x" * MAX, b"y"]),
        (b"x" * (MAX + 1) + b"\r" * (2 * MAX) + b"\n", [long(b"x" * (MAX + 1))]),
        (b"x" + b"\r" * (2 * MAX) + b"x\r\r", [long(b"x" + b"\r" * (2 * MAX) + b"x")]),
        (b"x" * 10 + b"\r" * (2 * MAX), [b"x" * 10]),
    ],
    ids=lambda v: f"{len(v)}B" if isinstance(v, bytes) else None,
)
def test_a_line_longer_than_the_largest_event_is_read_as_its_head_size_and_sha256(
        tmp_path: Path, content: bytes, lines: list[bytes | LongLine]) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    assert list(read_lines(path)) == lines


def test_a_long_line_is_rejected_unparsed_and_its_dead_letter_capped_as_the_streams() -> None:
    raw = b'{"event_id": "' + b"x" * MAX + b'"}'
    line = long(raw)
    rejection = parse_line(line, CTX)
    assert (rejection.code, rejection.field) == ("too_long", None)  # type: ignore[union-attr]
    letter = dead_letter(7, line, rejection)  # type: ignore[arg-type]
    stream = original_fields(raw)  # the worker's dead letter of the same message
    assert {k: v for k, v in letter.items() if k.startswith("raw")} == stream
    assert base64.b64decode(letter["raw_base64"]) == raw[:RAW_KEPT]
    assert (letter["raw_bytes"], letter["raw_sha256"]) == (len(raw),
                                                           hashlib.sha256(raw).hexdigest())


@pytest.mark.parametrize("size", [RAW_KEPT - 1, RAW_KEPT, RAW_KEPT + 1, MAX])
def test_a_rejected_line_keeps_at_most_64_kib_in_its_dead_letter(size: int) -> None:
    raw = b"\0" * size
    rejection = parse_line(raw, CTX)
    letter = dead_letter(1, raw, rejection)  # type: ignore[arg-type]
    assert letter["code"] == "bad_json"
    if size <= RAW_KEPT:
        assert letter["raw"] == raw.decode() and "raw_truncated" not in letter
    else:
        assert base64.b64decode(letter["raw_base64"]) == raw[:RAW_KEPT]
        assert letter["raw_truncated"] is True and letter["raw_bytes"] == size
        assert letter["raw_sha256"] == hashlib.sha256(raw).hexdigest()
