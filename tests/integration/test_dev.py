"""`grader dev` for real: local broker, Redis, worker, live sample events.

It runs until its view has shown what is checked (however long the start took),
then stops on SIGTERM like on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from grader.devtools.kafkabroker import kafka_available
from tests.conftest import ROOT, in_ci
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def port_open(url: str) -> bool:
    host, port = re.search(r"//([\d.]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


def watch(process: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """The lines ``process`` writes on standard output, as they come, and the thread that
    reads them (it ends when the process closes its output)."""
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return lines, reader


def shows_everything(lines: list[str]) -> bool:
    """Whether the plain view has shown what the test checks: tier changes of 3 customers
    (an initial one, one after an activity event), populations, events/s, and a support
    queue with a ticket in it."""
    shown = list(lines)
    changes = [line for line in shown if " -> " in line]
    return (len({line.split()[1] for line in changes}) >= 3
            and any("(initial," in line for line in changes)
            and any(re.search(r"after an? (sale|payment|interaction|assessment)\b", line)
                    for line in changes)
            and any(re.fullmatch(r"population abc-100: A \d+, B \d+, C \d+", line)
                    for line in shown)
            and any(re.fullmatch(r"events/s \d+\.\d", line) for line in shown)
            and any(re.search(r"^queue (billing|tech) \(\d+ open\): .*T-\d{6} DEV-\d{3} "
                              r"(A|B|C|-|blacklisted) \d", line) for line in shown))


@pytest.mark.parametrize("broker", ["tansu", "kafka"])
def test_dev_shows_tiers_changing_and_stops_everything(broker: str, tmp_path: Path) -> None:
    if broker == "kafka" and (why := kafka_available()) is not None:
        if in_ci():
            pytest.fail(f"Apache Kafka is needed in CI: {why}")
        pytest.skip(f"Apache Kafka cannot run here: {why}")
    # Runs until the view has shown everything, then gets SIGTERM (as from a terminal's
    # Ctrl-C); --duration only bounds it should the test itself die.
    with (tmp_path / "stderr").open("w+") as errors:
        dev = subprocess.Popen(
            [sys.executable, "-m", "grader", "dev", "--duration", "600", "--plain",
             "--customers", "6", "--broker", broker],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
            text=True)
        lines, reader = watch(dev)
        try:
            wait_for(lambda: shows_everything(lines) or dev.poll() is not None, 180,
                     "grader dev to show tier changes, populations and queues")
            assert dev.poll() is None, "grader dev stopped by itself"
            dev.send_signal(signal.SIGTERM)
            assert dev.wait(30) == 0
        finally:
            if dev.poll() is None:
                dev.kill()
                dev.wait()
            reader.join(10)
        errors.seek(0)
        stderr = errors.read()
    assert shows_everything(lines), "\n".join(lines[-40:]) + stderr[-2000:]
    changes = [line for line in lines if " -> " in line]
    customers = {line.split()[1] for line in changes}
    assert customers <= {f"DEV-{i:03d}" for i in range(1, 7)}
    assert re.search(r"\d+ tier changes seen for \d+ customers", stderr), stderr[-2000:]
    assert "stopping (SIGTERM)" in stderr, stderr[-2000:]
    urls = re.search(r"broker (\S+), redis (\S+),", stderr)
    assert urls is not None, stderr
    assert not port_open(urls.group(1)) and not port_open(urls.group(2))
