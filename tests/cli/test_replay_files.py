"""`grader replay` on any file: it never crashes, always writes whole outputs, and
keeps every dead letter within the stream's cap (a property over contents and sizes)."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import re
import tempfile
from pathlib import Path
from unittest import mock

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader.cli import main as cli
from grader.core.eventfile import MAX_EVENT_BYTES
from grader.core.events import RAW_KEPT
from grader.offline import replay as replay_module
from tests.conftest import ROOT

AS_OF = "2026-11-22T00:00:00+08:00"
POLICY = ROOT / "grader" / "policies" / "abc-100.toml"
_SALE = ('{{"event_id":"{e}","type":"sale","customer_id":"{c}",'
         '"occurred_at":"2026-0{m}-01T10:00:00Z","amount":{a},"currency":"CNY"}}')
HUGE = ["1e308", "1e400", "-0", "12345678901234567890123456789", "1" + "0" * 400,
        '"' + "9" * 5000 + '"', '"0.5"', "0.001", "NaN"]

events = st.builds(lambda e, c, m, a: _SALE.format(e=e, c=c, m=m, a=a).encode(),
                   st.integers(0, 9), st.sampled_from(["C1", "C2", "C 3"]), st.integers(1, 9),
                   st.sampled_from(["10", '"12.50"', *HUGE]))
long_runs = st.builds(lambda pattern, size: (pattern * (size // len(pattern) + 1))[:size],
                      st.sampled_from([b"\0", b"x", b"\xff", b"{", b"\xe4\xb8\xad", b" "]),
                      st.sampled_from([RAW_KEPT - 1, RAW_KEPT, RAW_KEPT + 1, MAX_EVENT_BYTES,
                                       MAX_EVENT_BYTES + 1, 3 * MAX_EVENT_BYTES + 5]))
padded = st.builds(lambda event, size: event[:-1] + b',"pad":"' + b"y" * size + b'"}',
                   events, st.sampled_from([RAW_KEPT, MAX_EVENT_BYTES - 200, MAX_EVENT_BYTES]))
segments = st.one_of(
    st.binary(max_size=40),
    events,
    long_runs,
    padded,
    st.sampled_from([b"\xff\xfe", b'{"event_id":"\xc3\x28"}', b"\xed\xa0\x80", b"9" * 400,
                     b"[" * 2000, b'{"customer_id":"C1"', b"", b"\r"]),
)
files = st.lists(st.tuples(segments, st.sampled_from([b"\n", b"\r\n", b"\n\n", b""])),
                 max_size=6)


def lines_of(content: bytes) -> list[bytes]:
    """The lines replay reads, as a plain split says them."""
    lines = content.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line.rstrip(b"\r\n") for line in lines]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(files, st.sampled_from([1, 2]))
def test_replay_never_crashes_and_writes_whole_capped_outputs(
        parts: list[tuple[bytes, bytes]], workers: int) -> None:
    content = b"".join(segment + end for segment, end in parts)
    with tempfile.TemporaryDirectory() as folder:
        events, out = Path(folder) / "events.jsonl", Path(folder) / "out"
        events.write_bytes(content)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), \
                mock.patch.object(replay_module, "PARALLEL_MIN_EVENTS", 1):
            code = cli.main(["replay", str(events), "--as-of", AS_OF, "--policy", str(POLICY),
                             "--out", str(out), "--workers", str(workers)])
        assert code == 0, stderr.getvalue()
        assert sorted(p.name for p in out.iterdir()) == [
            "at-risk.csv", "dead-letters.jsonl", "tier-changes.jsonl", "tier-warnings.jsonl",
            "tiers.csv"]
        rejected = int(re.search(r"rejected=(\d+)", stderr.getvalue())[1])  # type: ignore[index]
        whole_tiers(out / "tiers.csv")
        for line in (out / "tier-changes.jsonl").read_bytes().splitlines():
            orjson.loads(line)
        letters = [orjson.loads(x) for x in (out / "dead-letters.jsonl").read_bytes().split(b"\n")
                   if x]
        assert len(letters) == rejected
        lines = lines_of(content)
        for letter in letters:
            capped_as_the_stream(letter, lines[letter["line"] - 1])


def whole_tiers(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("customer_id,policy,tier,score\n") and text.endswith("\n")
    assert all(len(row) == 4 for row in csv.reader(io.StringIO(text, newline="")))


def capped_as_the_stream(letter: dict[str, object], line: bytes) -> None:
    """The dead letter of ``line``: the line itself up to 64 KiB, else its first 64 KiB
    with its size and SHA-256; ``too_long`` exactly when it is longer than an event."""
    assert (letter["code"] == "too_long") == (len(line) > MAX_EVENT_BYTES)
    if len(line) > RAW_KEPT:
        assert base64.b64decode(str(letter["raw_base64"])) == line[:RAW_KEPT]
        assert letter["raw_truncated"] is True and letter["raw_bytes"] == len(line)
        assert letter["raw_sha256"] == hashlib.sha256(line).hexdigest()
    elif "raw" in letter:
        assert str(letter["raw"]).encode() == line
    else:
        assert base64.b64decode(str(letter["raw_base64"])) == line
