"""`grader dev` for real: local broker, Redis, worker, live sample events."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from grader.kafkabroker import kafka_available
from tests.conftest import ROOT, in_ci

pytestmark = pytest.mark.integration


def port_open(url: str) -> bool:
    host, port = re.search(r"//([\d.]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, int(port))) == 0


@pytest.mark.parametrize("broker", ["tansu", "kafka"])
def test_dev_shows_tiers_changing_and_stops_everything(broker: str) -> None:
    if broker == "kafka" and (why := kafka_available()) is not None:
        if in_ci():
            pytest.fail(f"Apache Kafka is needed in CI: {why}")
        pytest.skip(f"Apache Kafka cannot run here: {why}")
    result = subprocess.run(
        [sys.executable, "-m", "grader", "dev", "--duration", "35", "--plain", "--customers", "6",
         "--broker", broker],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    changes = [line for line in result.stdout.splitlines() if " -> " in line]
    assert any("(initial," in line for line in changes), result.stdout[-2000:]
    customers = {line.split()[1] for line in changes}
    assert customers <= {f"DEV-{i:03d}" for i in range(1, 7)} and len(customers) >= 3
    assert re.search(r"\d+ tier changes seen for \d+ customers", result.stderr)
    # the same facts as the live view: populations, events/s, support queues in order
    lines = result.stdout.splitlines()
    assert any(re.fullmatch(r"population abc-100: A \d+, B \d+, C \d+", line) for line in lines)
    assert any(re.fullmatch(r"events/s \d+\.\d", line) for line in lines), result.stdout[-2000:]
    queues = [line for line in lines if re.match(r"queue (billing|tech) \(\d+ open\): ", line)]
    assert queues, result.stdout[-3000:]
    assert any(re.search(r"T-\d{6} DEV-\d{3} (A|B|C|-|blacklisted) \d", line) for line in queues)
    assert any(re.search(r"after an? (sale|payment|interaction|assessment)\b", line)
               for line in changes)
    urls = re.search(r"broker (\S+), redis (\S+),", result.stderr)
    assert urls is not None, result.stderr
    assert not port_open(urls.group(1)) and not port_open(urls.group(2))
