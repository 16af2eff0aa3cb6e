"""`grader dev` on a terminal, as a person sees it: the live table, then Ctrl-C.

Runs the real command on a pseudo-terminal of a fixed size, reads what it
draws, types Ctrl-C (the terminal then sends SIGINT to the foreground process
group) and checks that every process it started is gone within 5 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grader.settings import resolve_policy
from tests.conftest import ROOT
from tests.integration.test_dev import port_open

pytestmark = pytest.mark.integration

ROWS, COLUMNS = 50, 120
CUSTOMERS = 20
POLICIES = ("abc-100", "stars")
SHOW_TIMEOUT = 60.0
STOP_LIMIT = 5.0

_ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]")
#: What rich's Live writes before each redraw: back to the top of the last frame.
_REDRAW = re.compile(rb"\r(?:\x1b\[2K\x1b\[1A)+\x1b\[2K")
_CHANGE = re.compile(r"\d{4}-\d\d-\d\d (DEV-\d{3}) (\S+): (\S+) -> (\S+) \((initial|up|down),")


class Terminal:
    """A command on a pseudo-terminal of ROWS x COLUMNS; collects all it writes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[3] |= termios.ISIG  # Ctrl-C sends SIGINT, as on any terminal
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        try:
            # A session of its own with the pty as controlling terminal, as a shell does.
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, preexec_fn=_take_terminal,
            )  # fmt: skip
        finally:
            os.close(slave)
        self.output = b""
        self.started: set[tuple[int, str]] = set()  # the processes it started, once seen

    def read(self, seconds: float) -> None:
        """Collect output for up to ``seconds`` (less if the command closes the terminal)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not chunk:
                return
            self.output += chunk

    def text(self) -> str:
        """Everything written so far, control sequences removed."""
        return _ESCAPE.sub(b"", self.output).decode(errors="replace").replace("\r", "")

    def screen(self) -> str:
        """The last complete frame of the live view, control sequences removed."""
        frames = [_ESCAPE.sub(b"", f).decode(errors="replace") for f in _REDRAW.split(self.output)]
        complete = [f for f in frames if "latest tier changes" in f and "└" in f]
        return complete[-1].replace("\r", "") if complete else ""

    def close(self) -> None:
        os.close(self.master)


def _take_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def descendants(pid: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``, from /proc."""
    found: set[tuple[int, str]] = set()
    stack = [pid]
    while stack:
        parent = stack.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for child in map(int, children.read_text().split()):
                    start = _start_time(child)
                    if start is not None:
                        found.add((child, start))
                        stack.append(child)
    return found


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def alive(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    """Those of ``processes`` still running (same pid and start time, not a zombie)."""
    return {(pid, start) for pid, start in processes if _start_time(pid) == start}


def table(screen: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the tier table on ``screen``, as lists of cells."""
    header = next(line for line in screen.splitlines() if line.startswith("┃"))
    columns = [cell.strip() for cell in header.strip("┃").split("┃")]
    rows = [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in screen.splitlines()
        if line.startswith("│")
    ]
    return columns, rows


def shows_everything(screen: str) -> bool:
    """True once the view has every customer in the table and a tier change."""
    customers = {f"DEV-{i:03d}" for i in range(1, CUSTOMERS + 1)}
    return customers <= set(re.findall(r"│ (DEV-\d{3}) ", screen)) and bool(
        _CHANGE.search(screen)
    )


_TICKET = re.compile(r"(T-\d{6})\s+(DEV-\d{3})\s+(A|B|C|-|blacklisted)\s+(\d+\.\d)d")
_RANK = {"A": 0, "B": 1, "C": 2, "-": 3, "blacklisted": 4}


def queues_in_order(screen: str) -> bool:
    """Both queue tables show 2+ tickets, each queue in service order, tiers as the table's."""
    if not re.search(r"queue billing: \d+ open\s+queue tech: \d+ open", screen):
        return False
    queues: list[list[tuple[str, ...]]] = [[], []]  # billing left, tech right
    for line in screen.splitlines():
        for side, ticket in enumerate(_TICKET.findall(line)):
            queues[min(side, 1)].append(ticket)
    if any(len(q) < 2 for q in queues):
        return False
    _, rows = table(screen)
    tiers = {row[0]: row[1].split()[0] for row in rows}  # abc-100, the support policy
    blacklisted = {row[0] for row in rows if row[-1] == "yes"}
    for queue in queues:
        for _ticket, customer, tier, _waiting in queue:
            if tier != ("blacklisted" if customer in blacklisted else tiers.get(customer, "-")):
                return False  # the view is between two updates: look again
        keys = [(_RANK[tier], -float(waiting)) for _t, _c, tier, waiting in queue]
        if keys != sorted(keys):
            return False
    return True


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADER_")}
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env.update(TERM="xterm-256color", GRADER_POLICIES=",".join(POLICIES), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "grader", "dev", "--customers", str(CUSTOMERS)]
    term = Terminal(args, env)
    try:
        yield term
    finally:  # leave nothing behind, even when the test failed
        started = term.started | descendants(term.process.pid)
        if term.process.poll() is None:  # its own clean-up first, then kill what is left
            os.killpg(term.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                term.process.wait(10)
        for pid, _ in alive(started):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(term.process.pid, signal.SIGKILL)
        term.process.wait(10)
        term.close()


def test_live_view_shows_tiers_and_ctrl_c_stops_everything(terminal: Terminal) -> None:
    tier_names = {p: set(resolve_policy(p, ROOT / "config").tier_names) for p in POLICIES}

    deadline = time.monotonic() + SHOW_TIMEOUT
    while time.monotonic() < deadline and not shows_everything(terminal.screen()):
        assert terminal.process.poll() is None, terminal.text()[-3000:]
        terminal.read(0.5)
    screen = terminal.screen()
    assert shows_everything(screen), f"after {SHOW_TIMEOUT:g}s the screen was:\n{screen}"

    # The table: a customer column, one per active policy, each cell a tier of that policy.
    columns, rows = table(screen)
    assert columns == ["customer", *POLICIES, "blacklisted"], screen
    assert len(rows) == CUSTOMERS, screen
    for row in rows:
        assert len(row) == len(columns), row
        for policy, cell in zip(POLICIES, row[1:], strict=False):
            assert cell.split()[0] in tier_names[policy], (policy, row, screen)
    # Each tier that would drop shows its drop date and the tier then (issue 23).
    drops = [(day, tier) for day, tier in re.findall(r"drops (\d{4}-\d\d-\d\d)→(\S+)", screen)
             if not tier.endswith("…")]  # a cell cut to the terminal's width ends so
    assert drops, screen
    assert all(tier in set().union(*tier_names.values()) for _day, tier in drops), drops
    # The latest changes: real transitions between tiers of the policy named.
    changes = _CHANGE.findall(screen)
    assert changes, screen
    for _, policy, old, new, direction in changes:
        assert policy in POLICIES
        assert new in tier_names[policy] and (old == "-") == (direction == "initial"), changes
        assert old == "-" or old in tier_names[policy]
    assert "Traceback" not in terminal.text() and "Error" not in terminal.text(), terminal.text()
    # Fits the terminal: no line wider than it, the frame not taller.
    assert max(map(len, screen.splitlines())) <= COLUMNS
    assert len(screen.splitlines()) < ROWS

    # Populations per policy and the event rate.
    assert re.search(r"^abc-100: A \d+  B \d+  C \d+", screen, re.M), screen
    assert re.search(r"\d+\.\d events/s", screen), screen
    # The support queues in service order: tier rank (A, B, C under abc-100, then not
    # graded, then blacklisted), then longest waiting first; each tier as in the table.
    deadline = time.monotonic() + SHOW_TIMEOUT
    while time.monotonic() < deadline and not queues_in_order(terminal.screen()):
        terminal.read(0.5)
    assert queues_in_order(terminal.screen()), terminal.screen()

    # What it started: tansu, redis-server and the worker (the generator is a thread).
    started = terminal.started = descendants(terminal.process.pid)
    commands = [command_line(pid) for pid, _ in started]
    assert any("tansu" in c for c in commands), commands
    assert any("redis-server" in c for c in commands), commands
    assert any("grader worker" in c for c in commands), commands
    urls = re.search(r"broker (\S+), redis (\S+),", terminal.text())
    assert urls is not None, terminal.text()[-3000:]

    os.write(terminal.master, b"\x03")  # Ctrl-C
    pressed = time.monotonic()
    while time.monotonic() - pressed < STOP_LIMIT + 5:
        terminal.read(0.1)
        if terminal.process.poll() is not None and not alive(started):
            break
    stopped_after = time.monotonic() - pressed
    assert terminal.process.poll() is not None, "grader dev still running after Ctrl-C"
    assert not alive(started), [command_line(pid) for pid, _ in alive(started)]
    assert stopped_after < STOP_LIMIT, f"everything stopped only after {stopped_after:.1f}s"
    terminal.read(0.5)
    assert terminal.process.returncode == 0, terminal.text()[-3000:]
    text = terminal.text()
    assert "stopping (Ctrl-C)" in text, text[-3000:]
    assert re.search(rf"\d+ tier changes seen for {CUSTOMERS} customers", text), text[-3000:]
    assert "Traceback" not in text and "Error" not in text, text[-3000:]
    assert not port_open(urls.group(1)) and not port_open(urls.group(2))
