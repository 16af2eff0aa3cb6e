"""kafka-python, the benchmarks' independent client (a dev dependency; grader itself uses
aiokafka only): producers that load a broker and consumers that read it back."""

from __future__ import annotations

import warnings
from typing import Any


def kafka_module() -> Any:
    """kafka-python, imported without its import-time DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import kafka
        import kafka.admin
        import kafka.errors
    return kafka
