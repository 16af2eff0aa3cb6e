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


def test_a_batch_that_began_under_an_earlier_assignment_gives_up() -> None:
    """Lost and regained: the batch read its states before, the new owner wrote since."""
    clock = Clock()
    lease, lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 100.0, 0)
    lease.saw(SYNC_GROUP, 100.5, 0)
    lease.begin()
    lease.check("sending")
    assert lost == []
    lease.saw(JOIN_GROUP, 101.0, 0)  # frozen, expelled, thawed, rejoined
    lease.saw(SYNC_GROUP, 101.5, 0)
    assert lease.valid()
    lease.check("sending")
    assert lost == ["sending"]


def test_a_new_assignment_waits_for_its_first_heartbeat() -> None:
    """A JoinGroup that waited 9 s for another member: the lease, from its send time,
    ended already; the first batch waits for the Heartbeat instead of giving up."""
    import asyncio

    clock = Clock()
    lease, lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 91.0, 0)
    lease.saw(SYNC_GROUP, 100.0, 0)
    lease.begin()
    assert not lease.valid()

    async def batch() -> None:
        waiting = asyncio.create_task(lease.ready("sending"))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        lease.saw(HEARTBEAT, 100.2, 0)
        await asyncio.wait_for(waiting, 1)

    asyncio.run(batch())
    assert lost == []


def test_a_new_assignment_refused_at_its_first_heartbeat_gives_up_at_once() -> None:
    import asyncio

    clock = Clock()
    lease, lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 91.0, 0)
    lease.saw(SYNC_GROUP, 100.0, 0)
    lease.begin()
    lease.saw(HEARTBEAT, 100.2, 25)  # UNKNOWN_MEMBER_ID
    asyncio.run(asyncio.wait_for(lease.ready("sending"), 1))
    assert lost == ["sending"]


def test_a_short_lease_of_a_new_assignment_is_confirmed_before_a_batch() -> None:
    """tansu held the JoinGroup 3 s of a 6 s session: 1.8 s of lease are left at the
    assignment, too short for a batch's writes on a busy machine. The batch waits for
    the first Heartbeat before it takes the lock; a long lease does not wait."""
    import asyncio

    clock = Clock()
    lease, lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 91.0, 0)
    lease.saw(SYNC_GROUP, 95.0, 0)  # until 99: 1 s left at 98 < half the session
    clock.now = 98.0
    assert lease.valid()

    async def before_a_batch() -> None:
        waiting = asyncio.create_task(lease.confirmed())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        lease.saw(HEARTBEAT, 98.0, 0)  # renewed until 106
        assert await asyncio.wait_for(waiting, 1)
        assert await asyncio.wait_for(lease.confirmed(), 0.01)  # confirmed: no wait

    asyncio.run(before_a_batch())
    assert lost == []
    assert lease.until == 106.0


def test_a_long_lease_of_a_new_assignment_does_not_wait() -> None:
    import asyncio

    clock = Clock()
    lease, _lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 100.0, 0)
    lease.saw(SYNC_GROUP, 100.1, 0)  # until 108: 7.5 s left at 100.5
    clock.now = 100.5
    assert asyncio.run(asyncio.wait_for(lease.confirmed(), 0.01))
    assert lease.unconfirmed


def test_confirmation_waits_no_longer_than_a_session() -> None:
    """No Heartbeat answered (a slow coordinator): the wait ends after a session, and
    the writes' own checks decide."""
    import asyncio

    clock = Clock()
    lease, lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 91.0, 0)
    lease.saw(SYNC_GROUP, 95.0, 0)
    clock.now = 98.0

    async def with_time_passing() -> None:
        waiting = asyncio.create_task(lease.confirmed())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        clock.now = 108.5  # a session later
        assert await asyncio.wait_for(waiting, 1)  # the batch goes on; its writes check

    asyncio.run(with_time_passing())
    assert lost == []  # the wait itself gives nothing up


@pytest.mark.parametrize("how", ["rebalance", "new assignment"])
def test_a_rebalance_while_confirming_skips_the_batch(how: str) -> None:
    """Faust's revoke waits for the batch's messages: a batch still waiting for its
    lease when a rebalance begins is skipped, not held, nor written under it."""
    import asyncio

    clock = Clock()
    lease, lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 91.0, 0)
    lease.saw(SYNC_GROUP, 95.0, 0)
    clock.now = 98.0

    async def interrupted() -> bool:
        waiting = asyncio.create_task(lease.confirmed())
        await asyncio.sleep(0.1)
        assert not waiting.done()
        if how == "rebalance":
            lease.saw(HEARTBEAT, 98.0, 27)  # REBALANCE_IN_PROGRESS
        else:
            lease.saw(JOIN_GROUP, 98.0, 0)
            lease.saw(SYNC_GROUP, 98.1, 0)
        return await asyncio.wait_for(waiting, 1)

    assert asyncio.run(interrupted()) is False
    assert lost == []
    assert lease.rebalancing is (how == "rebalance")


def test_a_short_lease_during_a_rebalance_skips_the_batch_at_once() -> None:
    import asyncio

    clock = Clock()
    lease, lost = lease_at(clock)
    lease.saw(JOIN_GROUP, 91.0, 0)
    lease.saw(SYNC_GROUP, 95.0, 0)
    lease.saw(HEARTBEAT, 95.5, 27)  # REBALANCE_IN_PROGRESS, no renewal
    clock.now = 98.0
    assert asyncio.run(asyncio.wait_for(lease.confirmed(), 0.01)) is False
    lease.saw(HEARTBEAT, 98.0, 0)  # a batch with a long lease is not skipped
    assert asyncio.run(asyncio.wait_for(lease.confirmed(), 0.01)) is True
    assert lost == []
