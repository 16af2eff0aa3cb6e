"""A stopping Faust worker waits for a rebalance in progress; grader's bound
(grader/stream/faust_patches/shutdown.py) exits before it ends.

A plain Faust app (tests/integration/faust_stop_app.py) on Apache Kafka, grader out of the
picture, three members of one group: A, then B, which is then frozen (SIGSTOP), then C,
whose join starts a rebalance that cannot end before B's 45 s session runs out. A rejoins
and is stopped (SIGTERM) in that rebalance. aiokafka's coordinator, closing, waits for
its pending JoinGroup, so Faust as it is exits only after the broker dropped B. With the
patch, A exits within its grace, while B is still a member of the group. Ordering, not
time: what the test checks is whether B was still in the group when A was gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import CoordinatorNotAvailableError

from grader.devtools.services import free_port
from tests.integration.conftest import ROOT, Server, wait_for

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("faust_stop_app.py")
REJOIN = "(Re-)joining group"


class Member:
    def __init__(self, broker: Server, app_id: str, tmp_path: Path, client_id: str,
                 *flags: str) -> None:
        self.log_path = tmp_path / f"{client_id}.log"
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(APP), broker.url, app_id, str(tmp_path / client_id),
                 str(free_port()), client_id, *flags],
                cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait()


def members(admin: KafkaAdminClient, group: str) -> tuple[str, set[str]]:
    """The group's state and its members' client ids."""
    try:
        found = admin.describe_groups([group])[group]
    except CoordinatorNotAvailableError:  # a new broker: no group coordinator yet
        return "", set()
    return found["group_state"], {m["client_id"] for m in found["members"]}


@pytest.mark.parametrize("broker", ["kafka"], ids=["on_kafka"], indirect=True)
@pytest.mark.parametrize("bounded", [False, True], ids=["faust_as_is", "with_bound"])
def test_a_worker_stopped_in_a_rebalance_exits_before_it_ends(broker: Server, tmp_path: Path,
                                                              bounded: bool) -> None:
    app_id = f"stop-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics([NewTopic(f"{app_id}-src", 3, 1)])
    started: list[Member] = []
    try:
        a = Member(broker, app_id, tmp_path, "a", *(["--bounded"] if bounded else []))
        started.append(a)
        wait_for(lambda: members(admin, app_id) == ("Stable", {"a"}), 90, "A alone in the group")
        b = Member(broker, app_id, tmp_path, "b")
        started.append(b)
        wait_for(lambda: members(admin, app_id) == ("Stable", {"a", "b"}), 90,
                 "A and B in the group")
        os.kill(b.process.pid, signal.SIGSTOP)  # B stays a member until its session ends
        joins = a.log().count(REJOIN)
        c = Member(broker, app_id, tmp_path, "c")
        started.append(c)
        # C's join starts a rebalance; A learns of it from a Heartbeat and rejoins
        wait_for(lambda: a.log().count(REJOIN) > joins, 90, "A to rejoin for C")
        state, ids = members(admin, app_id)
        assert state == "PreparingRebalance" and "b" in ids, (state, ids)
        a.process.send_signal(signal.SIGTERM)
        wait_for(lambda: a.process.poll() is not None, 120, "A to exit")
        state, ids = members(admin, app_id)
        if bounded:
            assert "b" in ids, (state, ids, a.log()[-1500:])
            assert "still stopping: exiting now" in a.log()
        else:
            # Faust as it is: A's stop waited for the rebalance, which ended only when the
            # broker dropped the frozen B; when A exits sooner, shutdown.py's bound is moot
            assert "b" not in ids, (state, ids)
    finally:
        for member in started:
            member.kill()
        admin.close()
