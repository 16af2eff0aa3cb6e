"""A bound on how long the worker takes to stop after SIGTERM or SIGINT.

mode's Worker stops on a signal through ``_schedule_shutdown`` (private; the
one path both signals take) and then waits for everything to stop: leaving
the consumer group waits for a rebalance in progress (aiokafka's coordinator,
closing, awaits its pending JoinGroup, which the broker answers only when
every member rejoined or was dropped; 41 s was seen). The worker's subclass
starts grader.stream.worker's exit timer (SHUTDOWN_GRACE) at the first
signal.

Before the group first assigned the worker partitions, the subclass exits at
once instead (``early_exit``): nothing can have been graded, and a graceful
stop there closed the RocksDB tables while the consumer thread was still
joining, whose assignment then reached the closed store and the process died
of SIGSEGV (exit -11; seen once in a clean-clone CI run of
test_sigterm_during_start_up_stops_at_once[on_kafka-Updating subscribed topics]).

Kept by tests/integration/test_faust_shutdown.py (a plain Faust app on Apache
Kafka, stopped while a rebalance waits for a frozen member: without the
bound it exits only after the broker dropped that member, at the end of its
session; tried 2026-12-08), and by tests/integration (every Worker.stop in
tests/integration/conftest.py fails a test whose worker is not gone within
5 s of SIGTERM).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any


def worker_class(on_first_signal: Callable[[], object],
                 early_exit: Callable[[signal.Signals], object] | None = None) -> Any:
    """A ``faust.Worker`` that, at the first stopping signal, calls ``early_exit`` (which
    exits the process, or returns to let the stop go on), then ``on_first_signal``."""
    import faust

    class Worker(faust.Worker):
        def _schedule_shutdown(self, signum: signal.Signals) -> None:
            if not self._signal_stop_time:
                if early_exit is not None:
                    early_exit(signum)
                on_first_signal()
            super()._schedule_shutdown(signum)

    return Worker
