"""What the worker does with one message, as pure functions (no Kafka, no Faust).

The agent reads a message and the customer's current state, calls one of these
and gets back the outputs to publish and the new state to store (or None when
the state did not change). Grading itself is grader.core.grading's one step; the
state is updated in place, so a batch keeps one live state per customer and
encodes it once (grader.stream.processor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from grader.core.clock import TimestampError, format_instant, parse_instant
from grader.core.codec import dump_state, load_state
from grader.core.events import (
    FUTURE_TOLERANCE_US,
    NO_VALUE,
    TOPIC_OF_TYPE,
    Event,
    Rejection,
    original_fields,
    parse_event,
)
from grader.core.grading import (
    Grading,
    StepResult,
    apply_event,
    apply_policy,
    apply_tick,
    new_state,
    policy_stale,
    snapshot,
)
from grader.core.risk import refresh_risk
from grader.core.state import CustomerState
from grader.core.topology import (
    CUSTOMER_TIERS,
    DEAD_LETTERS,
    REPARTITION,
    TIER_CHANGES,
    TIER_WARNINGS,
    partition_of,
)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed message and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a message without a value (a tombstone)
    timestamp: float | None = None  # the message's timestamp (seconds), for the metrics


@dataclass(frozen=True, slots=True)
class Output:
    """One message to publish: topic suffix (without prefix), key and value."""

    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Outcome:
    """The result of one message: what to publish, then what to store."""

    status: str  # applied | duplicate | expired | ignored | rejected | forwarded | unchanged
    outputs: list[Output] = field(default_factory=list)
    state: CustomerState | None = None  # the state to store; None = leave the table alone
    code: str | None = None  # why, when rejected
    conflict: bool = False  # a duplicate whose content differs from the event applied
    # The customer's support-queue keys in Redis are to be written (from the stored state,
    # after the outputs are published: grader.sinks.redis).
    support: bool = False


def handle_event(msg: Incoming, load: Callable[[bytes], CustomerState | None], clock_us: int,
                 grading: Grading, now_us: int, partitions: int,
                 snapshots: bool = True) -> Outcome:
    """Grade one input message.

    ``load`` gives the state of a customer by key (None if never stored; it is
    updated in place); it is called only for a valid event on the right topic
    and partition. ``clock_us`` is the latest tick this partition has seen
    (NEVER if none): a customer's as_of is brought up to it, so a tick that
    overtook an event still counts.

    A valid event on a partition other than the one its customer_id hashes to
    (murmur2, as the Java client; ``partitions`` of them) is forwarded to the
    repartition topic, keyed and partitioned by customer_id, and graded when
    it arrives there (docs/streaming.md, "Repartitioning"). A message without
    a key is routed by its customer_id the same way.

    ``snapshots`` False: no customer-tiers snapshot for a customer with tiers (the
    worker defers them while behind: grader.stream.processor, Processor.defer_risk).
    """
    parsed = parse_event(msg.value, grading.parse_context(now_us))
    if isinstance(parsed, Event):
        parsed = misrouted(parsed, msg) or parsed
    if isinstance(parsed, Rejection):
        return Outcome("rejected", [dead_letter(msg, parsed)], code=parsed.code)
    key = parsed.customer_id.encode()
    if partition_of(key, partitions) != msg.partition:
        return Outcome("forwarded", [Output(REPARTITION, key, msg.value or b"")])
    current = load(key)
    state = current if current is not None else new_state(parsed.customer_id)
    # graded under other policies (a roll-out): that regrade first, with its own cause
    steps = [apply_policy(state, grading, now_us)] if policy_stale(state, grading) else []
    step = apply_event(state, parsed, grading, now_us)
    if step.status != "applied":
        if steps:  # not applied, but the roll-out's regrade is stored
            return graded(step.status, state, steps, conflict=step.conflict,
                          snapshots=snapshots)
        return Outcome(step.status, conflict=step.conflict)
    steps.append(step)
    if clock_us > state.as_of:
        steps.append(apply_tick(state, clock_us, grading, now_us))
    return graded("applied", state, steps, snapshots=snapshots)


def handle_tick(state: CustomerState, as_of: int, grading: Grading, now_us: int) -> Outcome:
    """Re-grade one customer as of a tick (in place); nothing to do if it is already there.

    A customer graded under other policies is graded again first (a roll-out)."""
    steps = [apply_policy(state, grading, now_us)] if policy_stale(state, grading) else []
    if as_of > state.as_of:
        steps.append(apply_tick(state, as_of, grading, now_us))
    if not steps:
        return Outcome("unchanged")
    return graded("applied", state, steps)


def handle_policy(state: CustomerState, grading: Grading, now_us: int) -> Outcome:
    """Grade one customer again under changed policies (the roll-out sweep)."""
    if not policy_stale(state, grading):
        return Outcome("unchanged")
    return graded("applied", state, [apply_policy(state, grading, now_us)])


def graded(status: str, state: CustomerState, steps: list[StepResult],
           conflict: bool = False, snapshots: bool = True) -> Outcome:
    """What grading ``steps`` did to ``state``: its outputs (graded_outputs), the state to
    store, and whether its support-queue keys in Redis are to be written. ``snapshots``
    False: no customer-tiers snapshot if the customer has tiers (handle_event)."""
    return Outcome(status, graded_outputs(state.customer_id, steps,
                                          snapshots or not state.tiers),
                   state, conflict=conflict,
                   support=any(step.support_changed for step in steps))


@dataclass(slots=True)
class Record:
    """A customers-table value: the state, who stored it, and the outputs stored with it.

    The worker stores a customer's state together with the outputs its batch
    computed for that customer *before* publishing them (docs/streaming.md,
    "Ordering"). A later process that loads a record stored by another
    process (``epoch``) cannot know whether those outputs were published, so
    it publishes them again: the same bytes, so the same event_id always
    carries the same tier change. So too for ``support``: the customer's keys
    in Redis are written again.
    """

    state: CustomerState
    epoch: str
    pending: list[Output]
    support: bool = False  # its support-queue keys in Redis were to be written


#: How a record says ``support`` (an entry of its pending list): the record format of the
#: changelog is kept, so that records stored by an earlier version, or by the other workers
#: of a rolling deploy, read the same.
SUPPORT_MARK = "@support"


def encode_record(state: CustomerState, epoch: str, pending: list[Output],
                  support: bool = False, body: bytes | None = None) -> bytes:
    """``{"epoch", "rev", "pending": [[topic, value], ...]}`` newline, then the state
    codec; ``rev`` is the state's revision (a record from before it has none: 0);
    ``support``: a last pending entry ``[SUPPORT_MARK, ""]``; ``body``: the state's
    ``dump_state`` when the caller has it."""
    entries = [[out.topic, out.value.decode()] for out in pending]
    if support:
        entries.append([SUPPORT_MARK, ""])
    head = orjson.dumps({"epoch": epoch, "rev": state.revision, "pending": entries})
    return head + b"\n" + (dump_state(state) if body is None else body)


def decode_record(value: bytes) -> Record:
    """The inverse of :func:`encode_record`."""
    head, _, body = value.partition(b"\n")
    meta = orjson.loads(head)
    state = load_state(body)
    state.revision = meta.get("rev", 0)
    key = state.customer_id.encode()
    pending = [Output(topic, key, text.encode()) for topic, text in meta["pending"]
               if topic != SUPPORT_MARK]
    return Record(state, meta["epoch"], pending,
                  support=len(pending) != len(meta["pending"]))


def republished(pending: list[Output]) -> list[Output]:
    """What to publish again of a record's pending outputs: every tier change (the same
    bytes under the same event_id), but of its customer-tiers snapshots only the last one.

    A record's outputs may have gone out already, newest last. A snapshot is the
    customer's whole current value: sending an earlier one of the record again
    would put an older sequence after a newer one on customer-tiers, which a
    follower takes for the current tiers, and which compaction keeps if nothing
    newer follows (issue 20). The last one is the stored state's own.
    """
    last = max((n for n, out in enumerate(pending) if out.topic == CUSTOMER_TIERS), default=-1)
    return [out for n, out in enumerate(pending) if out.topic != CUSTOMER_TIERS or n == last]


def graded_outputs(customer_id: str, steps: list[StepResult],
                   with_snapshot: bool = True) -> list[Output]:
    """Tier changes in order, then the customer's snapshot if any step changed it (and
    ``with_snapshot``)."""
    key = customer_id.encode()
    outputs = [Output(TIER_CHANGES, key, orjson.dumps(change))
               for step in steps for change in step.changes]
    if with_snapshot and any(step.snapshot_changed for step in steps):
        outputs.append(Output(CUSTOMER_TIERS, key, orjson.dumps(snapshot(steps[-1].state))))
    return outputs


def with_risk(state: CustomerState, outputs: list[Output], grading: Grading, warn_days: int,
              now_us: int, force: bool = False) -> list[Output]:
    """A batch's outputs for one customer, once its tier at risk is refreshed
    (grader.core.risk.refresh_risk, once per customer and batch: never per message).

    Its customer-tiers snapshots give way to one of its final state (with
    drops_on and to_tier), in the place of the last of them, sent when one of
    them was there (a tier, pin or the blacklist flag changed, or a republished
    record's) or a drops_on or to_tier changed (then last); then the tier
    warnings due. The other outputs stay as they are. ``force``: send the snapshot
    anyway (the customer's last ones were held back while the worker was behind).
    """
    changed, warnings = refresh_risk(state, grading, warn_days, now_us)
    changed = changed or force
    state.risk_stale = False
    last = max((n for n, out in enumerate(outputs) if out.topic == CUSTOMER_TIERS), default=-1)
    key = state.customer_id.encode()
    if last < 0 and not changed:
        kept = list(outputs)
    else:
        fresh = Output(CUSTOMER_TIERS, key, orjson.dumps(snapshot(state)))
        kept = [fresh if n == last else out for n, out in enumerate(outputs)
                if out.topic != CUSTOMER_TIERS or n == last]
        if last < 0:
            kept.append(fresh)
    kept += [Output(TIER_WARNINGS, key, orjson.dumps(w)) for w in warnings]
    return kept


def misrouted(event: Event, msg: Incoming) -> Rejection | None:
    """A valid event on the wrong topic or under another key (stream-only rejections).

    The repartition topic carries every type: only events checked here are sent there.
    """
    topic = TOPIC_OF_TYPE[event.type]
    if not msg.topic.endswith((topic, REPARTITION)):
        return Rejection("wrong_topic", "type", f"a {event.type} event belongs on the "
                         f"{topic} topic, not {msg.topic}")
    if msg.key is not None and msg.key != event.customer_id.encode():
        return Rejection("wrong_key", "customer_id", "the message key must be the customer_id")
    return None


def parse_tick(value: bytes | None, now_us: int) -> int | Rejection:
    """The as_of (µs) of a tick message ``{"as_of": RFC 3339}``.

    Like an event's occurred_at, an as_of more than 5 minutes ahead of the
    wall clock ``now_us`` is refused: it would move every customer's as_of,
    which never moves back, into the future.
    """
    if value is None:
        return NO_VALUE
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Rejection("bad_json", None, f"not valid JSON: {exc}")
    as_of = obj.get("as_of") if isinstance(obj, dict) else None
    if not isinstance(as_of, str):
        return Rejection("missing_field", "as_of", "a tick needs an as_of timestamp")
    try:
        instant = parse_instant(as_of)
    except TimestampError as exc:
        return Rejection("bad_timestamp", "as_of", f"as_of {exc}")
    if instant > now_us + FUTURE_TOLERANCE_US:
        return Rejection("future_timestamp", "as_of", "as_of is more than 5 minutes in the future")
    return instant


def tick_message(as_of: int, tick_id: str) -> bytes:
    """The value of a tick message."""
    return orjson.dumps({"as_of": format_instant(as_of), "tick_id": tick_id})


def dead_letter(msg: Incoming, rejection: Rejection,
                original: dict[str, Any] | None = None) -> Output:
    """A dead-letter record: the original bytes, where they came from, and why.

    ``original``: the ``raw_*`` fields when they are not ``msg.value``'s (a line
    of `grader produce` too long to be held whole).
    """
    record: dict[str, Any] = {"topic": msg.topic, "partition": msg.partition,
                              "offset": msg.offset, "code": rejection.code,
                              "field": rejection.field, "message": rejection.message}
    record.update(original_fields(msg.value) if original is None else original)
    if msg.key is not None:
        record.update({f"key_{k}": v for k, v in original_fields(msg.key).items()})
    return Output(DEAD_LETTERS, msg.key, orjson.dumps(record))

