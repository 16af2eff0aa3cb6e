"""Running the worker: validate, create topics, start Faust, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging

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


def run_worker(settings: Settings, grading: Grading, options: StreamOptions) -> int:
    """Create missing topics, then run the Faust worker until a signal stops it."""
    from grader.stream.admin import ensure_topics
    from grader.stream.topology import load_topics

    ensure_topics(settings.kafka_url,
                  load_topics(settings.topic_prefix, settings.partitions).values())
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    import faust

    from grader.stream.app import create_app

    app = create_app(settings, grading, options)
    worker = faust.Worker(app, loglevel=options.log_level.upper(), quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode's Worker always ends with SystemExit
        return int(exc.code or 0)
    return 0
