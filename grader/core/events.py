"""Parse and validate one input event: bytes -> Event or Rejection.

A bad event is a value (a Rejection with a stable code and a message naming
the field), never an exception that escapes. The codes are listed in
docs/events.md.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from math import isfinite
from typing import Any

import orjson

from grader.core.clock import US_PER_SECOND, TimestampError, parse_instant
from grader.core.money import MoneyError, parse_minor

ACTIVITY_TYPES = frozenset({"sale", "refund", "payment", "interaction", "assessment"})
TICKET_TYPES = frozenset({"ticket_opened", "ticket_closed"})
TOPIC_OF_TYPE = {
    "sale": "transactions",
    "refund": "transactions",
    "payment": "transactions",
    "interaction": "interactions",
    "assessment": "interactions",
    "override": "overrides",
    "ticket_opened": "tickets",
    "ticket_closed": "tickets",
}
OVERRIDE_ACTIONS = frozenset({"pin", "unpin", "blacklist", "unblacklist"})
FUTURE_TOLERANCE_US = 5 * 60 * US_PER_SECOND

_CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_KIND = re.compile(r"[a-z][a-z0-9_]{0,63}")
_INDICATOR = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_CURRENCY = re.compile(r"[A-Z]{3}")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event was refused: a stable ``code``, the ``field`` and a message."""

    code: str
    field: str | None
    message: str


@dataclass(slots=True)
class Event:
    """One valid input event. Fields not used by its type are None.

    Never changed once built. Not a frozen dataclass only because building one
    costs a call per field (19 of them): a quarter of the time of parsing.
    """

    event_id: str
    type: str
    customer_id: str
    ts: int  # occurred_at, microseconds since the epoch
    occurred_at: str  # as written
    amount: int | None = None  # minor units
    invoice_id: str | None = None
    gross_profit: int | None = None  # minor units
    kind: str | None = None
    indicator: str | None = None
    score: Fraction | None = None
    action: str | None = None
    policy: str | None = None
    tier: str | None = None
    actor: str | None = None
    reason: str | None = None
    ticket_id: str | None = None
    queue: str | None = None
    subject: str | None = None


def content_digest(event: Event) -> int:
    """A CRC-32 of everything an event says, to tell a duplicate of it from a
    different event reusing its id. Stable across processes (unlike ``hash``)."""
    text = "\x1f".join(map(str, (
        event.type, event.customer_id, event.ts, event.amount, event.invoice_id,
        event.gross_profit, event.kind, event.indicator, event.score, event.action,
        event.policy, event.tier, event.actor, event.reason, event.ticket_id, event.queue,
        event.subject)))
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What validation needs to know: currency, policies' tiers, live clock."""

    currency: str
    tiers_by_policy: dict[str, tuple[str, ...]]
    now_us: int | None = None  # set in live mode: reject events > 5 min ahead


class _Reject(Exception):
    def __init__(self, code: str, fld: str | None, message: str) -> None:
        super().__init__(message)
        self.rejection = Rejection(code, fld, message)


NO_VALUE = Rejection("no_value", None, "the message has no value (null, a tombstone)")
#: The most bytes of a rejected message that a dead letter carries (docs/events.md).
RAW_KEPT = 64 * 1024


def original_fields(raw: bytes | None, kept: int = RAW_KEPT) -> dict[str, Any]:
    """A rejected message's bytes for a dead letter: ``{"raw": text}`` when they are
    UTF-8, else ``{"raw_base64": ...}``; ``{"raw": None}`` for no value at all.

    Past ``kept`` bytes only the first ``kept`` are kept (base64), with the
    size and SHA-256 of the whole (``raw_bytes``, ``raw_sha256``): a dead letter
    on Kafka must stay well within the broker's message size; the message
    itself stays in its topic, at the offset the dead letter names. Replay's
    dead letters are capped the same way (the line stays in its file).
    """
    if raw is None:
        return {"raw": None}
    if len(raw) > kept:
        return truncated_fields(raw[:kept], len(raw), hashlib.sha256(raw).hexdigest())
    try:
        return {"raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw_base64": base64.b64encode(raw).decode("ascii")}


def truncated_fields(head: bytes, size: int, sha256: str) -> dict[str, Any]:
    """The dead-letter fields of a message of ``size`` bytes (SHA-256 ``sha256``, hex)
    of which only ``head``, its first bytes, is kept."""
    return {"raw_base64": base64.b64encode(head).decode("ascii"), "raw_truncated": True,
            "raw_bytes": size, "raw_sha256": sha256}


def parse_event(raw: bytes | str | None, ctx: ParseContext) -> Event | Rejection:
    """Decode and validate one event; never raises for bad input.

    ``raw`` is None for a Kafka message without a value (a tombstone).
    """
    if raw is None:
        return NO_VALUE
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return bad_json(exc)
    return parse_decoded(obj, ctx)


def bad_json(exc: orjson.JSONDecodeError) -> Rejection:
    """The rejection of a line that is not JSON (``exc`` from ``orjson.loads``)."""
    return Rejection("bad_json", None, f"not valid JSON: {exc}")


def parse_decoded(obj: object, ctx: ParseContext) -> Event | Rejection:
    """Validate an event already decoded by ``orjson.loads``; never raises for bad input."""
    try:
        return validate(obj, ctx)
    except _Reject as rej:
        return rej.rejection


def validate(obj: object, ctx: ParseContext) -> Event:
    """Validate a decoded JSON value; raises _Reject (internal) when invalid."""
    if type(obj) is dict:
        event = common_event(obj, ctx)
        if event is not None:
            return event
    return _validate(obj, ctx)


_MONEY_TYPES = frozenset({"sale", "refund", "payment"})


def common_event(obj: dict[str, Any], ctx: ParseContext) -> Event | None:
    """A valid sale, refund, payment or interaction of the usual shape, checked cheaply.

    Returns exactly the Event that the full validator returns, or None for
    anything else (valid or not): the full validator then decides and says why.
    """
    event_id = obj.get("event_id")
    customer_id = obj.get("customer_id")
    occurred_at = obj.get("occurred_at")
    if (
        type(event_id) is not str
        or not 0 < len(event_id) <= 128
        or type(customer_id) is not str
        or not _CUSTOMER_ID.fullmatch(customer_id)
        or type(occurred_at) is not str
    ):
        return None
    try:
        ts = parse_instant(occurred_at)
    except TimestampError:
        return None
    if ctx.now_us is not None and ts > ctx.now_us + FUTURE_TOLERANCE_US:
        return None
    etype = obj.get("type")
    if etype == "interaction":
        kind, value = obj.get("kind"), obj.get("value")
        if (
            type(kind) is str
            and _KIND.fullmatch(kind)
            and (value is None or type(value) is int or (type(value) is float and isfinite(value)))
        ):
            return Event(event_id, etype, customer_id, ts, occurred_at, kind=kind)
        return None
    if type(etype) is not str or etype not in _MONEY_TYPES:  # a list or dict is unhashable
        return None
    currency, invoice_id = obj.get("currency"), obj.get("invoice_id")
    if type(currency) is not str or currency != ctx.currency or not _CURRENCY.fullmatch(currency):
        return None
    if invoice_id is None:
        if etype == "payment":
            return None
    elif type(invoice_id) is not str or not 0 < len(invoice_id) <= 128:
        return None
    gross_profit = obj.get("gross_profit") if etype == "sale" else None
    try:
        amount = parse_minor(obj.get("amount"))
        if gross_profit is not None:
            gross_profit = parse_minor(gross_profit, allow_zero=True)
    except MoneyError:
        return None
    return Event(event_id, etype, customer_id, ts, occurred_at, amount, invoice_id, gross_profit)


def _validate(obj: object, ctx: ParseContext) -> Event:
    """The full validator: every shape, and the reason of every rejection."""
    if not isinstance(obj, dict):
        raise _Reject("not_object", None, "an event must be a JSON object")
    etype = _string(obj, "type")
    if etype not in TOPIC_OF_TYPE:
        raise _Reject("unknown_type", "type", f"unknown event type {etype!r}")
    event_id = _string(obj, "event_id", code="bad_event_id")
    if len(event_id) > 128:
        raise _Reject("bad_event_id", "event_id", "event_id must be 1..128 characters")
    customer_id = _string(obj, "customer_id", code="bad_customer_id")
    if not _CUSTOMER_ID.fullmatch(customer_id):
        raise _Reject(
            "bad_customer_id", "customer_id", "customer_id must be 1..64 chars of [A-Za-z0-9._:-]"
        )
    occurred_at = _require(obj, "occurred_at")
    try:
        ts = parse_instant(occurred_at)
    except TimestampError as exc:
        raise _Reject("bad_timestamp", "occurred_at", f"occurred_at {exc}") from None
    if ctx.now_us is not None and ts > ctx.now_us + FUTURE_TOLERANCE_US:
        raise _Reject(
            "future_timestamp", "occurred_at", "occurred_at is more than 5 minutes in the future"
        )
    fields = _TYPE_FIELDS[etype](obj, ctx)
    return Event(event_id, etype, customer_id, ts, str(occurred_at), **fields)


def _require(obj: dict[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise _Reject("missing_field", name, f"missing required field {name!r}")
    return obj[name]


def _string(
    obj: dict[str, Any],
    name: str,
    *,
    code: str = "bad_field",
    optional: bool = False,
    max_len: int = 256,
) -> Any:
    if optional and obj.get(name) is None:
        return None
    value = _require(obj, name)
    if not isinstance(value, str) or not value:
        raise _Reject(code, name, f"{name} must be a non-empty string")
    if len(value) > max_len:
        raise _Reject(code, name, f"{name} must be at most {max_len} characters")
    return value


def _money(obj: dict[str, Any], name: str, *, allow_zero: bool = False) -> int:
    try:
        return parse_minor(_require(obj, name), allow_zero=allow_zero)
    except MoneyError as exc:
        raise _Reject("bad_amount", name, f"{name} {exc}") from None


def _currency(obj: dict[str, Any], ctx: ParseContext) -> None:
    currency = _require(obj, "currency")
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        raise _Reject("bad_currency", "currency", "currency must be an ISO 4217 code like CNY")
    if currency != ctx.currency:
        raise _Reject(
            "wrong_currency",
            "currency",
            f"currency {currency} is not the policy currency {ctx.currency}",
        )


def _number(obj: dict[str, Any], name: str, *, code: str = "bad_field") -> Fraction:
    value = _require(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Reject(code, name, f"{name} must be a number")
    if (isinstance(value, float) and value != value) or value in (float("inf"), float("-inf")):
        raise _Reject(code, name, f"{name} must be a finite number")
    return Fraction(Decimal(repr(value))) if isinstance(value, float) else Fraction(value)


def _money_fields(obj: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
    _currency(obj, ctx)
    return {
        "amount": _money(obj, "amount"),
        "invoice_id": _string(obj, "invoice_id", optional=True, max_len=128),
    }


def _sale(obj: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
    fields = _money_fields(obj, ctx)
    if obj.get("gross_profit") is not None:
        fields["gross_profit"] = _money(obj, "gross_profit", allow_zero=True)
    return fields


def _payment(obj: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
    fields = _money_fields(obj, ctx)
    if fields["invoice_id"] is None:
        raise _Reject("missing_field", "invoice_id", "missing required field 'invoice_id'")
    return fields


def _interaction(obj: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
    kind = _string(obj, "kind", code="bad_kind")
    if not _KIND.fullmatch(kind):
        raise _Reject("bad_kind", "kind", "kind must be a lowercase identifier like 'referral'")
    if obj.get("value") is not None:
        _number(obj, "value")
    return {"kind": kind}


def _assessment(obj: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
    indicator = _string(obj, "indicator")
    if not _INDICATOR.fullmatch(indicator):
        raise _Reject("bad_field", "indicator", "indicator must be an identifier like 'C1'")
    score = _number(obj, "score", code="bad_score")
    if not 0 <= score <= 10:
        raise _Reject("bad_score", "score", "score must be between 0 and 10")
    return {"indicator": indicator, "score": score, "actor": _string(obj, "assessor")}


def _override(obj: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
    action = _string(obj, "action", code="bad_action")
    if action not in OVERRIDE_ACTIONS:
        raise _Reject("bad_action", "action", "action must be pin, unpin, blacklist or unblacklist")
    fields = {
        "action": action,
        "reason": _string(obj, "reason", max_len=1024),
        "actor": _string(obj, "actor"),
    }
    if action in ("pin", "unpin"):
        policy = fields["policy"] = _string(obj, "policy", code="unknown_policy")
        if policy not in ctx.tiers_by_policy:
            raise _Reject("unknown_policy", "policy", f"policy {policy!r} is not active")
    if action == "pin":
        tier = fields["tier"] = _string(obj, "tier", code="unknown_tier")
        if tier not in ctx.tiers_by_policy[fields["policy"]]:
            raise _Reject(
                "unknown_tier", "tier", f"tier {tier!r} is not a tier of {fields['policy']}"
            )
    return fields


def _ticket(obj: dict[str, Any], ctx: ParseContext) -> dict[str, Any]:
    queue = _string(obj, "queue", optional=True, max_len=64) or "default"
    if not _CUSTOMER_ID.fullmatch(queue):
        raise _Reject("bad_field", "queue", "queue must be 1..64 chars of [A-Za-z0-9._:-]")
    return {
        "ticket_id": _string(obj, "ticket_id", max_len=128),
        "queue": queue,
        "subject": _string(obj, "subject", optional=True, max_len=1024),
    }


_TYPE_FIELDS = {
    "sale": _sale,
    "refund": _money_fields,
    "payment": _payment,
    "interaction": _interaction,
    "assessment": _assessment,
    "override": _override,
    "ticket_opened": _ticket,
    "ticket_closed": _ticket,
}
