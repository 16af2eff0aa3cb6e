"""Running the worker: validate, create topics, start Faust, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
from pathlib import Path

from grader.core import Grading
from grader.errors import GraderError
from grader.settings import Settings, resolve_policy
from grader.stream.options import StreamOptions

log = logging.getLogger(__name__)


def load_grading(settings: Settings) -> Grading:
    """The active policies of ``settings``; a bad one is a one-line GraderError."""
    policies = tuple(resolve_policy(name, settings.config_dir) for name in settings.policies)
    try:
        return Grading(policies)
    except ValueError as exc:
        raise GraderError(f"setting policies (GRADER_POLICIES): {exc}") from None


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


def run_worker(settings: Settings, grading: Grading, options: StreamOptions) -> int:
    """Create missing topics, then run the Faust worker until a signal stops it."""
    from grader.stream.admin import ensure_topics
    from grader.stream.topology import load_topics

    ensure_topics(settings.kafka_url,
                  load_topics(settings.topic_prefix, settings.partitions).values())
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    use_uvloop()
    import faust

    from grader.stream.app import create_app
    from grader.stream.localstate import changelogs_of, check_local_tables

    app = create_app(settings, grading, options)
    check_local_tables(Path(app.conf.tabledir), changelogs_of(app), settings.kafka_url)
    tune_gc()
    worker = faust.Worker(app, loglevel=options.log_level.upper(), quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode's Worker always ends with SystemExit
        return int(exc.code or 0)
    return 0
