"""Worker options that grader/settings.py does not have yet, read from the environment.

* ``GRADER_BROKER_QUIRKS``: ``none`` (default, Apache Kafka) or ``tansu``
  (the local broker of `grader dev` and the tests; see docs/streaming.md).
* ``GRADER_LIVE_TICKS``: ``1`` (default) ticks every customer at each local
  midnight of every policy timezone; ``0`` leaves ticks to `grader tick`.
* ``GRADER_LOG_LEVEL``: the worker's log level (default ``info``).

A bad value is a SettingsError naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grader.errors import SettingsError

QUIRKS = ("none", "tansu")
LOG_LEVELS = ("debug", "info", "warning", "error")
_BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


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
                # tansu's ListOffsets(latest) is "base offset of the last batch + 1": with one
                # record per batch it is the true end, so changelog recovery reads it all.
                "producer_max_batch_size": 1,
                # tansu holds the first JoinGroup for session/2 (Faust's default 60 s -> 30 s).
                "broker_session_timeout": 6.0,
                "broker_heartbeat_interval": 1.0,
            }
        return {}


def load_options(env: Mapping[str, str] | None = None) -> StreamOptions:
    """Read and validate the GRADER_* worker options."""
    env = os.environ if env is None else env
    quirks = env.get("GRADER_BROKER_QUIRKS", "none").strip().lower() or "none"
    if quirks not in QUIRKS:
        raise SettingsError(f"setting broker_quirks (GRADER_BROKER_QUIRKS): {quirks!r} is not "
                            f"one of {', '.join(QUIRKS)}")
    live = env.get("GRADER_LIVE_TICKS", "1").strip().lower()
    if live not in _BOOLEANS:
        raise SettingsError(f"setting live_ticks (GRADER_LIVE_TICKS): {live!r} is not 1 or 0")
    level = env.get("GRADER_LOG_LEVEL", "info").strip().lower()
    if level not in LOG_LEVELS:
        raise SettingsError(f"setting log_level (GRADER_LOG_LEVEL): {level!r} is not one of "
                            f"{', '.join(LOG_LEVELS)}")
    return StreamOptions(quirks, _BOOLEANS[live], level)
