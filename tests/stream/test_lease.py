"""The worker's lease on its partitions (grader.stream.lease): renewed by the group's
answers, ended by its refusals, and checked before a write."""

from __future__ import annotations

import pytest

from grader.stream.lease import HEARTBEAT, JOIN_GROUP, SYNC_GROUP, Lease


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lease_at(clock: Clock) -> tuple[Lease, list[str]]:
    lost: list[str] = []
    return Lease(10.0, clock, lost.append), lost


def test_no_lease_before_the_group_assigned_the_partitions() -> None:
    clock = Clock()
    lease, lost = lease_at(clock)
    lease.check("sending")
    assert lost == ["sending"]


def test_a_heartbeat_answered_holds_the_lease_for_the_session_less_the_margin() -> None:
    clock = Clock()
    lease, lost = lease_at(clock)
    assert lease.margin == 2.0  # 20% of a 10 s session
    lease.saw(HEARTBEAT, 100.0, 0)  # sent at 100: the member is kept until 110 at least
    clock.now = 107.9
    lease.check("sending")
    assert lost == []
    clock.now = 108.0  # a freeze or a cut network: no answer since
    lease.check("sending")
    assert lost == ["sending"]


def test_the_send_time_counts_not_the_answer_time() -> None:
    clock = Clock()
    lease, _lost = lease_at(clock)
    clock.now = 130.0  # frozen after sending at 100: the answer is read 30 s later
    lease.saw(HEARTBEAT, 100.0, 0)
    assert not lease.valid()


@pytest.mark.parametrize("code", [22, 25, 82])  # ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED
def test_a_heartbeat_refused_ends_the_lease_at_once(code: int) -> None:
    clock = Clock()
    lease, _lost = lease_at(clock)
    lease.saw(HEARTBEAT, 100.0, 0)
    lease.saw(HEARTBEAT, 101.0, code)
    assert not lease.valid()


def test_rebalancing_neither_renews_nor_ends_it() -> None:
    clock = Clock()
    lease, _lost = lease_at(clock)
    lease.saw(HEARTBEAT, 100.0, 0)
    lease.saw(HEARTBEAT, 105.0, 27)  # REBALANCE_IN_PROGRESS
    assert lease.until == 108.0


def test_a_sync_after_a_join_renews_from_the_join() -> None:
    clock = Clock()
    lease, _lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 100.0, 0)
    lease.saw(SYNC_GROUP, 103.0, 0)
    assert lease.until == 108.0
    lease.saw(SYNC_GROUP, 120.0, 0)  # no JoinGroup answered before it: nothing proven
    assert lease.until == 108.0
