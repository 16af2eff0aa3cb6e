"""`grader replay` and `grader whatif` against hostile files and disks, through the real
command: bounded memory whatever the file holds, outputs whole or not at all, and one
line on stderr (exit 2) for everything that stops them."""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import orjson
import pytest

from bench.generate_events import generate
from grader.cli import main as cli
from grader.core.errors import GraderError
from grader.core.eventfile import MAX_EVENT_BYTES
from grader.core.events import RAW_KEPT
from tests.cli.test_cli import DATA, one_line_error
from tests.conftest import ROOT, mounted

AS_OF = "2026-11-22T00:00:00+08:00"
MAX_RSS = 300 * 1024 * 1024  # the 2 GB file took 4.3 GB before lines were bounded
SHA256_OF_2_GIB_OF_NULS = "a7c744c13cc101ed66c29f672f92455547889cc586ce6d44fe76ae824958ea51"
SMALL = 64 * 1024  # the small disk, or the largest file the process may write
OUTPUTS = {"replay": ("tiers.csv", "tier-changes.jsonl", "at-risk.csv", "tier-warnings.jsonl",
                      "dead-letters.jsonl"),
           "whatif": ("matrix.csv", "movers.csv", "at-risk.csv")}


class Run:
    """A finished `grader` process: exit code, stdout, stderr and its peak memory."""

    def __init__(self, returncode: int, stdout: str, stderr: str, max_rss: int) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr
        self.max_rss = max_rss  # bytes: the largest of the process and those it forked


#: Runs the command given after the file name in a forked child and writes the child's peak
#: memory (os.wait4, in KiB) to the file; ends as the child ended (its code, or its signal).
#: A process pytest starts directly would report pytest's own peak as well: Linux counts the
#: memory a process had before exec (for a vfork, the parent's) in its ru_maxrss.
_MEASURE = """
import os, signal, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


def grader(*args: str | Path, preexec: Callable[[], None] | None = None,
           tmp: Path) -> Run:
    """Run `grader` and measure its peak memory (the largest of it and the processes it
    forked; through ``_MEASURE``). Its temporary files go to ``tmp``/tmp."""
    out, err, peak = tmp / "stdout.txt", tmp / "stderr.txt", tmp / "peak-kib.txt"
    (tmp / "tmp").mkdir(exist_ok=True)
    with out.open("wb") as stdout, err.open("wb") as stderr:
        returncode = subprocess.call(
            [sys.executable, "-c", _MEASURE, str(peak), sys.executable, "-m", "grader",
             *map(str, args)], cwd=ROOT, stdout=stdout, stderr=stderr, preexec_fn=preexec,
            env={**os.environ, "TMPDIR": str(tmp / "tmp")})
    return Run(returncode, out.read_text(), err.read_text(), int(peak.read_text()) * 1024)


def test_the_peak_measured_is_the_commands_own(tmp_path: Path) -> None:
    """However large this test process has grown (the whole suite makes it several hundred
    MB), the peak of a small command is small: measured by wait4 straight from pytest, it
    was pytest's own, and failed the tests below whenever the suite had grown past
    MAX_RSS."""
    ballast = bytearray(MAX_RSS + (100 << 20))
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touched: resident
    done = grader("--version", tmp=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("grader "), done.stderr
    assert done.max_rss < 100 << 20, f"peak {done.max_rss >> 20} MB"
    del ballast


def command(name: str, events: Path, out: Path) -> list[str | Path]:
    """The arguments of `grader replay` or `grader whatif` on ``events`` into ``out``."""
    if name == "replay":
        return ["replay", events, "--as-of", AS_OF, "--policy", "abc-100", "--out", out]
    return ["whatif", events, "--as-of", AS_OF, "--current", "abc-100", "--candidate", "stars",
            "--out", out]


def contents(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (hidden ones too) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def dead_letters(out: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in (out / "dead-letters.jsonl").read_bytes().splitlines()]


@pytest.fixture(scope="module")
def many_customers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24,000 events of 4,000 customers: sharded, and a tiers.csv and movers.csv over 64 KiB."""
    path = tmp_path_factory.mktemp("many") / "events.jsonl"
    path.write_bytes(b"\n".join(generate(4000, 24_000, seed=7, as_of=AS_OF, months=11)) + b"\n")
    return path


# ---- memory: a line longer than the largest event is never held whole ----------------

@pytest.mark.parametrize("before", ["nothing", "24,000 events (sharded)"])
def test_a_sparse_2_gb_file_replays_in_flat_memory(tmp_path: Path, before: str,
                                                   many_customers: Path) -> None:
    events = tmp_path / "sparse.jsonl"
    prefix = b"" if before == "nothing" else many_customers.read_bytes()
    events.write_bytes(prefix)
    os.truncate(events, 2 << 30)  # the rest is a hole: NULs that take no disk
    done = grader(*command("replay", events, tmp_path / "out"), "--workers", "2", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("replay as of") and done.stderr.count("\n") == 1
    assert done.max_rss < MAX_RSS, f"peak {done.max_rss >> 20} MB"
    *_, letter = dead_letters(tmp_path / "out")
    assert (letter["code"], letter["raw_truncated"], letter["raw_bytes"]) == (
        "too_long", True, (2 << 30) - len(prefix))
    assert len(letter["raw_base64"]) == (RAW_KEPT + 2) // 3 * 4  # type: ignore[arg-type]
    if not prefix:
        assert letter["raw_sha256"] == SHA256_OF_2_GIB_OF_NULS
    else:
        assert (tmp_path / "out" / "tiers.csv").read_bytes().count(b"\n") > 2000


@pytest.mark.parametrize("name", ["replay", "whatif"])
def test_long_nul_lines_make_capped_dead_letters(tmp_path: Path, name: str) -> None:
    events = tmp_path / "nul.jsonl"
    small = DATA.joinpath("small.jsonl").read_bytes()
    with events.open("wb") as handle:  # 64 MB of NULs, then 100 KiB, then the fixture
        handle.truncate(64 << 20)
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n" + b"\0" * (100 << 10) + b"\n" + small)
    done = grader(*command(name, events, tmp_path / "out"), tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.max_rss < MAX_RSS, f"peak {done.max_rss >> 20} MB"
    if name == "whatif":
        return
    assert (tmp_path / "out" / "dead-letters.jsonl").stat().st_size < 4 * RAW_KEPT
    first, second, *_rest = dead_letters(tmp_path / "out")
    assert (first["line"], first["code"], first["raw_bytes"], first["raw_sha256"]) == (
        1, "too_long", 64 << 20, hashlib.sha256(bytes(64 << 20)).hexdigest())
    assert f"longer than the largest event ({MAX_EVENT_BYTES} bytes)" in str(first["message"])
    assert (second["line"], second["code"], second["raw_bytes"], second["raw_sha256"]) == (
        2, "bad_json", 100 << 10, hashlib.sha256(bytes(100 << 10)).hexdigest())


# ---- a full disk: every output is the old whole file or the new whole one --------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of this test's own."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(disk, f"size={SMALL}"):
        yield disk


def small_files() -> None:
    """In the child: no file may grow past SMALL bytes (EFBIG, not SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (SMALL, SMALL))


@pytest.mark.parametrize("name", ["replay", "whatif"])
@pytest.mark.parametrize("full", ["small tmpfs", "RLIMIT_FSIZE"])
def test_a_full_disk_leaves_the_old_outputs_whole(tmp_path: Path, many_customers: Path,
                                                  full: str, name: str,
                                                  request: pytest.FixtureRequest) -> None:
    if full == "small tmpfs":
        out = request.getfixturevalue("small_disk") / "out"
        preexec = None
    else:  # in one process: the outputs are the first files over the limit
        out, preexec = tmp_path / "out", small_files
    old = grader(*command(name, DATA / "small.jsonl", out), tmp=tmp_path)
    assert old.returncode == 0, old.stderr
    before = contents(out)
    assert sorted(before) == sorted(OUTPUTS[name])
    workers = "1" if preexec else "2"
    done = grader(*command(name, many_customers, out), "--workers", workers, preexec=preexec,
                  tmp=tmp_path)
    assert contents(out) == before  # no cut file, no temporary file left
    run = subprocess.CompletedProcess([], done.returncode, done.stdout, done.stderr)
    one_line_error(run, "as they were")
    assert done.returncode == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_leaves_no_output_when_there_was_none(tmp_path: Path,
                                                          many_customers: Path,
                                                          workers: str) -> None:
    """In two processes, the forked one's results (a temporary file) are the first
    file over the limit."""
    out = tmp_path / "out"
    done = grader(*command("replay", many_customers, out), "--workers", workers,
                  preexec=small_files, tmp=tmp_path)
    assert contents(out) == {} and not list((tmp_path / "tmp").iterdir())
    run = subprocess.CompletedProcess([], done.returncode, done.stdout, done.stderr)
    where = str(out / "tiers.csv") if workers == "1" else "grader-replay-"
    one_line_error(run, where, "File too large")
    assert done.returncode == 2


# ---- an output that cannot be replaced: refused before anything is written -------------

@pytest.mark.parametrize(("name", "protected"), [("replay", "tiers.csv"),
                                                 ("replay", "dead-letters.jsonl"),
                                                 ("whatif", "movers.csv")])
def test_a_read_only_output_is_refused_before_anything_is_written(
        tmp_path: Path, name: str, protected: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for file in OUTPUTS[name]:
        (out / file).write_bytes(b"old " + file.encode() + b"\n")
    (out / protected).chmod(0o444)
    before = contents(out)
    done = grader(*command(name, DATA / "small.jsonl", out), tmp=tmp_path)
    assert contents(out) == before
    run = subprocess.CompletedProcess([], done.returncode, done.stdout, done.stderr)
    one_line_error(run, f"{out / protected}: is read-only", "nothing written")
    assert done.returncode == 2


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A folder holding old outputs that cannot be written to: a read-only tmpfs as root
    (who may write anywhere else), a folder without write permission otherwise."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        _old_outputs(folder)
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)
        return
    with mounted(folder, "size=1m"):
        _old_outputs(folder)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder


def _old_outputs(folder: Path) -> None:
    for files in OUTPUTS.values():
        for file in files:
            (folder / file).write_bytes(b"old\n")


@pytest.mark.parametrize("name", ["replay", "whatif"])
@pytest.mark.parametrize("where", ["the folder", "a folder to create in it"])
def test_an_unwritable_folder_is_refused_naming_the_file(unwritable: Path, tmp_path: Path,
                                                         name: str, where: str) -> None:
    out = unwritable if where == "the folder" else unwritable / "new"
    before = contents(unwritable)
    done = grader(*command(name, DATA / "small.jsonl", out), tmp=tmp_path)
    run = subprocess.CompletedProcess([], done.returncode, done.stdout, done.stderr)
    one_line_error(run, f"{out / OUTPUTS[name][0]}: its folder {unwritable} is not writable",
                   "nothing written")
    assert done.returncode == 2 and contents(unwritable) == before


@pytest.mark.parametrize("name", ["replay", "whatif"])
def test_an_out_that_is_a_file_is_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"a file\n")
    done = grader(*command(name, DATA / "small.jsonl", out / "sub"), tmp=tmp_path)
    run = subprocess.CompletedProcess([], done.returncode, done.stdout, done.stderr)
    one_line_error(run, f"{out / 'sub' / OUTPUTS[name][0]}: {out} is not a folder")
    assert done.returncode == 2 and out.read_bytes() == b"a file\n"


@pytest.mark.parametrize(("error", "needle"), [
    (MemoryError(), "events.jsonl: out of memory"),
    (BrokenProcessPool("a child died"), "events.jsonl: a grading process ended abruptly"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "events.jsonl: No space left"),
])
def test_what_stops_a_grading_is_one_line(error: BaseException, needle: str) -> None:
    with pytest.raises(GraderError, match=needle), cli._one_line(Path("events.jsonl")):
        raise error
