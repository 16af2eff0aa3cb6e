"""Keeping a batch's messages from being committed, though Faust acknowledges them.

Faust's ``Stream.take_events`` acknowledges every message of a batch in a
``finally`` once the loop body is done with it: also when the body raised or
was cancelled. A batch the worker did not settle (its states and outputs not
acknowledged by the broker) must never be committed, and Faust offers no way
to say so. Faust's ``Message.ack`` does nothing for a message whose ``acked``
flag is already set (faust/types/tuples.py), so setting it first keeps the
message away from the consumer's committed offsets: it is redelivered after
a restart or to the partition's next owner.

Kept by tests/stream/test_step.py (a batch that fails is not acknowledged;
the fake stream acknowledges in a ``finally`` as Faust's does).
"""

from __future__ import annotations

from typing import Any


def never_acknowledge(message: Any) -> None:
    """Make Faust's acknowledgement of ``message`` (a ``faust.types.Message``) a no-op: its
    offset is not committed here."""
    message.acked = True
