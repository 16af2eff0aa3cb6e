"""How the worker talks to its broker, from the validated settings.

* ``GRADER_BROKER_QUIRKS``: ``none`` (default, Apache Kafka) or ``tansu``
  (the local broker of `grader dev` and the tests; see docs/streaming.md).
* ``GRADER_LIVE_TICKS``: ``1`` (default) ticks every customer at each local
  midnight of every policy timezone; ``0`` leaves ticks to `grader tick`.
* ``GRADER_LOG_LEVEL``: the worker's log level (default ``info``).

Each is a setting of config/grader.toml (``broker_quirks``, ``live_ticks``,
``log_level``) overridden by its variable; grader.settings validates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grader.settings import Settings


@dataclass(frozen=True)
class StreamOptions:
    """How the worker talks to its broker."""

    broker_quirks: str = "none"
    live_ticks: bool = True
    log_level: str = "info"

    @property
    def faust_settings(self) -> dict[str, Any]:
        """Faust settings that differ for the broker in use."""
        if self.broker_quirks == "tansu":
            return {
                # tansu holds the first JoinGroup for session/2 (Faust's default 60 s -> 30 s).
                "broker_session_timeout": 6.0,
                "broker_heartbeat_interval": 1.0,
            }
        # A worker killed without leaving its group holds its partitions until its session
        # times out: Faust's 60 s default kept a restarted worker waiting that long on Kafka.
        return {"broker_session_timeout": 10.0, "broker_heartbeat_interval": 3.0}

    @property
    def fetch_max_wait_ms(self) -> int | None:
        """The consumer's fetch wait, if not Faust's 1,500 ms (tansu does not end it early)."""
        return 20 if self.broker_quirks == "tansu" else None

    @property
    def true_end_offsets(self) -> bool:
        """Check changelog end offsets by a fetch (tansu reports the last batch's base + 1)."""
        return self.broker_quirks == "tansu"


def load_options(settings: Settings) -> StreamOptions:
    """The worker options of validated settings."""
    return StreamOptions(settings.broker_quirks, settings.live_ticks, settings.log_level)
