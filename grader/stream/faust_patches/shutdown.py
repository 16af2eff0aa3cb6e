"""A bound on how long the worker takes to stop after SIGTERM or SIGINT.

mode's Worker stops on a signal through ``_schedule_shutdown`` (private; the
one path both signals take) and then waits for everything to stop: leaving
the consumer group waited for a rebalance in progress, up to 41 s. The
worker's subclass starts grader.stream.worker's exit timer (SHUTDOWN_GRACE)
at the first signal.

Kept by tests/integration (every Worker.stop in tests/integration/conftest.py
fails a test whose worker is not gone within 5 s of SIGTERM, e.g. the
rebalance tests of tests/integration/test_stream.py).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


def worker_class(on_first_signal: Callable[[], object]) -> Any:
    """A ``faust.Worker`` that calls ``on_first_signal`` at the first stopping signal."""
    import faust

    class Worker(faust.Worker):
        def _schedule_shutdown(self, signum: signal.Signals) -> None:
            if not self._signal_stop_time:
                on_first_signal()
            super()._schedule_shutdown(signum)

    return Worker
