"""SourceProgress: what may be committed on the input topics."""

from __future__ import annotations

from grader.stream.progress import SourceProgress

TP = ("g.transactions", 1)
OTHER = ("g.interactions", 1)


def graded(progress: SourceProgress, tp: tuple[str, int], offsets: range | list[int]) -> None:
    progress.graded([(tp[0], tp[1], o) for o in offsets])


def test_nothing_is_committable_before_the_seek_starts_a_partition() -> None:
    progress = SourceProgress()
    graded(progress, TP, range(5))
    assert progress.committable(TP) is None


def test_consecutive_graded_offsets_move_the_committable_offset() -> None:
    progress = SourceProgress()
    progress.start(TP, 40)
    graded(progress, TP, range(40, 45))
    assert progress.committable(TP) == 45


def test_duplicates_below_the_start_change_nothing() -> None:
    progress = SourceProgress()
    progress.start(TP, 40)
    graded(progress, TP, [38, 39, 40, 39])
    assert progress.committable(TP) == 41


def test_a_gap_is_never_committed_past() -> None:
    # The failure this guards against: offsets 41..70 skipped, 71.. graded.
    progress = SourceProgress()
    progress.start(TP, 41)
    graded(progress, TP, range(71, 80))
    assert progress.committable(TP) == 41
    graded(progress, TP, range(41, 80))  # read again from 41
    assert progress.committable(TP) == 80


def test_partitions_are_counted_apart() -> None:
    progress = SourceProgress()
    progress.start(TP, 0)
    progress.start(OTHER, 10)
    progress.graded([(TP[0], 1, 0), (OTHER[0], 1, 10), (TP[0], 1, 1), (OTHER[0], 1, 12)])
    assert (progress.committable(TP), progress.committable(OTHER)) == (2, 11)


def test_a_revoked_partition_is_forgotten_until_it_is_started_again() -> None:
    progress = SourceProgress()
    progress.start(TP, 0)
    graded(progress, TP, range(3))
    progress.forget([TP])
    graded(progress, TP, range(3, 6))
    assert progress.committable(TP) is None
    progress.start(TP, 3)
    assert progress.committable(TP) == 3


def test_the_worker_consumer_commits_inputs_from_progress_not_from_faust_gaps() -> None:
    # The consumer object only; nothing connects to the (absent) broker.
    import asyncio

    import faust
    from faust.types import TP as FaustTP

    from grader.stream.faust_patches.seeking import transport_for

    app = faust.App("t", broker="kafka://127.0.0.1:9")
    progress = SourceProgress()
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
        progress.start(source, 41)
        assert consumer._new_offset(source) == 41
        progress.graded([("g.transactions", 1, o) for o in range(41, 73)])
        assert consumer._new_offset(source) == 73

    loop = app.loop  # Faust's, which its consumer is bound to
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        consumer._thread.thread_loop.close()  # made for its (unstarted) fetch thread
        asyncio.set_event_loop(None)
