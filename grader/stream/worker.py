"""Running the worker: validate, create topics, start Faust, stop on SIGTERM/SIGINT
within SHUTDOWN_GRACE seconds."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from grader.core.errors import GraderError, WorkerStop, one_line
from grader.core.grading import Grading
from grader.settings import Settings, make_data_dir, support_policy
from grader.stream.options import StreamOptions
from grader.web.access import Access

log = logging.getLogger(__name__)


def reach_redis(settings: Settings, grading: Grading) -> None:
    """Say where the support queues go, and check at once that Redis answers (one line if
    not); an empty redis_url means no support queues."""
    import asyncio

    from grader.sinks.redis import RedisSetupError, SupportQueues, shown

    if not settings.redis_url:
        print("grader: no support queues (redis_url is empty)", file=sys.stderr, flush=True)
        return
    print(f"grader: support queues in Redis at {shown(settings.redis_url)} ...",
          file=sys.stderr, flush=True)
    try:
        queues = SupportQueues(settings.redis_url, settings.redis_prefix,
                               support_policy(settings, grading), settings.redis_files)
    except ValueError as exc:
        raise GraderError(f"setting support_policy (GRADER_SUPPORT_POLICY): {exc}") from None

    async def reach() -> None:
        try:
            await queues.connect()
        finally:
            await queues.close()

    try:
        asyncio.run(reach())
    except RedisSetupError as exc:
        raise GraderError(str(exc)) from None


GC_THRESHOLDS = (50_000, 20, 20)  # Python's defaults: (700, 10, 10) in 3.11


def tune_gc() -> None:
    """Collect garbage less often; keep the start-up's objects out of every collection.

    A worker allocates a few hundred objects per message and keeps few of
    them, so the young generation fills every few messages. With Python's
    default thresholds the collector cost ~10% of the worker's time, and its
    older-generation passes over the cached customer states were what made
    the latency's 99th percentile (bench/worker_bench.py: p99 348 ms with
    the defaults, 230 ms with these, at the same rate).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def use_uvloop() -> None:
    """Run Faust on uvloop when it is installed (a declared dependency on Linux and macOS).

    Must come before Faust creates its event loops (the main one and its
    consumer thread's). bench/worker_bench.py measured 8-55% more events/s
    than on asyncio's default loop, in nine pairs of runs, alternated
    (docs/performance.md).
    """
    try:
        import uvloop  # noqa: F401
    except ImportError:
        log.warning("uvloop is not installed: the worker runs on asyncio's default loop")
        return
    import mode.loop

    mode.loop.use("uvloop")


SHUTDOWN_GRACE = 4.0  # seconds from SIGTERM/SIGINT to the exit, whatever is still pending


def exit_on_signal_until_started() -> None:
    """Until Faust's worker installs its own handlers, SIGTERM or SIGINT ends the process at
    once, exit code 0, with one line.

    Start-up (checks, topic creation, table recovery) grades nothing and commits nothing,
    so stopping there loses nothing; without this, a SIGTERM during start-up (a deploy
    rolled back, a test stopping a joining worker) killed the process with exit -15 and no
    word. mode replaces these handlers when the worker starts (Worker.on_first_start).
    """
    def stop(signum: int, frame: object) -> None:
        exit_before_grading(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def exit_before_grading(signum: int, code: int = 0, say: bool = True) -> None:
    """Exit at once with ``code``: a stopping signal came before anything was graded;
    ``say``: with the one line that says so."""
    if say:
        print(f"grader: {signal.Signals(signum).name} during start-up: stopped before "
              "grading anything", file=sys.__stderr__, flush=True)
    logging.shutdown()
    os._exit(code)


def exit_if_stuck(grace: float = SHUTDOWN_GRACE,
                  code: Callable[[], int] = lambda: 0) -> threading.Timer:
    """From now, exit the process in ``grace`` seconds (with status ``code()``) unless it
    has exited by then.

    A stopping worker commits what it graded, then leaves its consumer group;
    leaving waited for a rebalance in progress, up to 41 s. That wait
    protects nothing: a record graded but not committed is graded again by
    the next owner, as a duplicate.
    """
    def exit_now() -> None:
        log.warning("still stopping %.0f s after the signal (leaving the consumer group?): "
                    "exiting now; what was graded and not committed is graded again", grace)
        logging.shutdown()
        os._exit(code())

    timer = threading.Timer(grace, exit_now)
    timer.daemon = True
    timer.start()
    return timer


def run_worker(settings: Settings, grading: Grading, options: StreamOptions,
               access: Access | None = None) -> int:
    """Create missing topics, then run the Faust worker until a signal stops it; ``access``:
    the endpoint's callers (default: from ``settings``)."""
    from grader.core.topology import load_topics
    from grader.kafka.admin import ensure_topics

    make_data_dir(settings)
    ensure_topics(settings.kafka,
                  load_topics(settings.topic_prefix, settings.partitions).values())
    from grader.kafka.policyregistry import PolicySuperseded, PolicyWatch, check_and_record

    check_and_record(settings.kafka, settings.topic_prefix, grading.policies)
    watch = PolicyWatch(settings.kafka, settings.topic_prefix, grading.policies)
    why = watch.poll()
    if why is not None:
        watch.close()
        raise GraderError(why)

    use_uvloop()
    from grader.stream.app import create_app
    from grader.stream.faust_patches.shutdown import worker_class
    from grader.stream.localstate import changelogs_of, check_local_tables

    stopped: list[int] = []  # the exit code of a worker that stopped itself

    def stop(why: WorkerStop) -> None:
        """One line (on the process's stderr: Faust sends sys.stderr to its log), then the
        same stop as SIGTERM: what was graded and stored is committed, nothing else."""
        line = f"{why}; this worker stops" if isinstance(why, PolicySuperseded) else str(why)
        print(f"grader: error: {one_line(line)}", file=sys.__stderr__, flush=True)
        stopped.append(why.exit_code)
        os.kill(os.getpid(), signal.SIGTERM)

    app = create_app(settings, grading, options, access=access, watch=watch, stop=stop)
    check_local_tables(Path(app.conf.tabledir), changelogs_of(app), settings.kafka)
    tune_gc()

    def exit_code() -> int:
        return stopped[0] if stopped else 0

    def exit_if_never_assigned(signum: signal.Signals) -> None:
        """Before the group first assigned partitions nothing was graded: exit at once (a
        graceful stop there could die in the closed store: faust_patches/shutdown.py)."""
        if not app.grader_assigned():  # type: ignore[attr-defined]
            exit_before_grading(signum, exit_code(), say=not stopped)

    worker_type = worker_class(lambda: exit_if_stuck(code=exit_code), exit_if_never_assigned)
    worker = worker_type(app, loglevel=options.log_level.upper(), quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode's Worker always ends with SystemExit
        return stopped[0] if stopped else int(exc.code or 0)
    finally:
        watch.close()
    return exit_code()
