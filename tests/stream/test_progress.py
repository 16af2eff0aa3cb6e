"""SourceProgress: what may be committed on the input topics, and when a partition is stuck."""

from __future__ import annotations

from grader.stream.progress import SourceProgress

TP = ("g.transactions", 1)
OTHER = ("g.interactions", 1)


def graded(progress: SourceProgress, tp: tuple[str, int], offsets: range | list[int],
           now: float) -> None:
    progress.graded([(tp[0], tp[1], o) for o in offsets], now)


def test_nothing_is_committable_before_the_seek_starts_a_partition() -> None:
    progress = SourceProgress(stall_after=2.0)
    graded(progress, TP, range(5), now=0.0)
    assert progress.committable(TP) is None


def test_consecutive_graded_offsets_move_the_committable_offset() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 40, now=0.0)
    graded(progress, TP, range(40, 45), now=1.0)
    assert progress.committable(TP) == 45


def test_duplicates_below_the_start_change_nothing() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 40, now=0.0)
    graded(progress, TP, [38, 39, 40, 39], now=1.0)
    assert progress.committable(TP) == 41


def test_a_gap_is_never_committed_past() -> None:
    # The failure this guards against: offsets 41..70 skipped, 71.. graded.
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 41, now=0.0)
    graded(progress, TP, range(71, 80), now=1.0)
    assert progress.committable(TP) == 41
    graded(progress, TP, range(41, 80), now=2.0)  # read again from 41
    assert progress.committable(TP) == 80


def test_partitions_are_counted_apart() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 0, now=0.0)
    progress.start(OTHER, 10, now=0.0)
    progress.graded([(TP[0], 1, 0), (OTHER[0], 1, 10), (TP[0], 1, 1), (OTHER[0], 1, 12)],
                    now=1.0)
    assert (progress.committable(TP), progress.committable(OTHER)) == (2, 11)


def test_a_revoked_partition_is_forgotten_until_it_is_started_again() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 0, now=0.0)
    graded(progress, TP, range(3), now=1.0)
    progress.forget([TP])
    graded(progress, TP, range(3, 6), now=1.0)
    assert progress.committable(TP) is None
    progress.start(TP, 3, now=2.0)
    assert progress.committable(TP) == 3


def test_a_partition_behind_a_record_graded_past_it_stalls_after_the_delay() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 41, now=0.0)
    graded(progress, TP, [71, 72], now=0.5)
    assert progress.stalled({}, now=1.0) == {}, "first seen behind at 1.0"
    assert progress.stalled({}, now=2.9) == {}
    assert progress.stalled({}, now=3.0) == {TP: 41}


def test_a_partition_behind_its_high_watermark_stalls_too() -> None:
    # Records dropped at the tail: nothing after them was graded.
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 41, now=0.0)
    assert progress.stalled({TP: 71}, now=1.0) == {}
    assert progress.stalled({TP: 71}, now=3.0) == {TP: 41}
    assert progress.stalled({TP: 41, OTHER: None}, now=3.0) == {}


def test_a_record_arriving_on_a_quiet_partition_is_not_a_stall() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 0, now=0.0)
    assert progress.stalled({TP: 0}, now=50.0) == {}, "caught up"
    assert progress.stalled({TP: 1}, now=60.0) == {}, "a tick arrived: its turn comes"
    graded(progress, TP, [0], now=60.5)
    assert progress.stalled({TP: 1}, now=63.0) == {}


def test_a_partition_that_moves_or_is_caught_up_does_not_stall() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 0, now=0.0)
    assert progress.stalled({TP: 100}, now=0.5) == {}
    graded(progress, TP, range(0, 10), now=1.5)
    assert progress.stalled({TP: 100}, now=3.0) == {}, "moved 1.5 s ago"
    assert progress.stalled({TP: 10}, now=9.0) == {}, "nothing left to grade"


def test_a_repair_is_not_repeated_before_the_delay() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 41, now=0.0)
    assert progress.stalled({TP: 71}, now=0.0) == {}
    assert progress.stalled({TP: 71}, now=2.0) == {TP: 41}
    progress.repairing(TP, now=2.0)
    assert progress.stalled({TP: 71}, now=3.0) == {}
    assert progress.stalled({TP: 71}, now=4.0) == {TP: 41}


def test_offsets_without_records_are_skipped_forward_only() -> None:
    progress = SourceProgress(stall_after=2.0)
    progress.start(TP, 41, now=0.0)
    progress.skip_to(TP, 45, now=1.0)
    assert progress.committable(TP) == 45
    progress.skip_to(TP, 43, now=1.0)
    assert progress.committable(TP) == 45
    progress.skip_to(OTHER, 9, now=1.0)
    assert progress.committable(OTHER) is None


def test_the_worker_consumer_commits_inputs_from_progress_not_from_faust_gaps() -> None:
    # The consumer object only; nothing connects to the (absent) broker.
    import asyncio

    import faust
    from faust.types import TP as FaustTP

    from grader.stream.faust_patches.seeking import transport_for

    app = faust.App("t", broker="kafka://127.0.0.1:9")
    progress = SourceProgress(stall_after=2.0)
    app.transport = transport_for(app, ["g.transactions"], ["127.0.0.1:9"], {}, False, None,
                                  progress)
    consumer = app.consumer
    source = FaustTP("g.transactions", 1)
    changelog = FaustTP("g.worker-customers-changelog", 1)

    async def run() -> None:
        # Input partitions have no read offset: Faust's fetch loop neither drops
        # records below it nor sees gaps past it; changelogs keep theirs.
        consumer._read_offset[source] = 70
        consumer._read_offset[changelog] = 70
        assert consumer._read_offset[source] is None
        assert consumer._read_offset[changelog] == 70
        await consumer._add_gap(source, 41, 70)  # a gap, were Faust to record one
        consumer._acked[source].extend([71, 72])  # graded past it
        assert consumer._new_offset(source) is None, "not started: nothing committed"
        progress.start(source, 41, now=0.0)
        assert consumer._new_offset(source) == 41
        progress.graded([("g.transactions", 1, o) for o in range(41, 73)], now=1.0)
        assert consumer._new_offset(source) == 73

    loop = app.loop  # Faust's, which its consumer is bound to
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        consumer._thread.thread_loop.close()  # made for its (unstarted) fetch thread
        asyncio.set_event_loop(None)
