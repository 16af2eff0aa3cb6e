"""CustomerState <-> bytes, for the worker's table and its changelog.

Version 6 (written now) is a compact binary layout (``Packer`` below): one
version byte ``0x06``, then the state's fields in a fixed order, each a tagged
value. Every string is written once and referred to by number after that (an
event id in the dedup table and again in an invoice, a policy name in tiers,
risk and the policies graded under). Event ids are kept exactly (a canonical
UUID in 16 bytes, a lowercase hex string in half its length, anything else as
UTF-8), so the dedup is exactly what it was (docs/decisions.md, "Stored state,
codec v6"). Instants are written relative to the customer's ``as_of``, in
seconds when whole.

Versions 1-5 (a JSON object, starting with ``{``) still load. Derived fields
(an invoice's first sale and completing payment) are recomputed on load rather
than stored.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from grader.core.state import CustomerState, Invoice, Risk, Ticket, TierState

VERSION = 6  # 2 added "digests" (a version 1 state loads with none: no conflict is seen);
# 3 added "tickets" (an older state loads with none: tickets were not kept before);
# 4 added "under" (an older state loads with none: it is graded again once, as in a roll-out);
# 5 added "risk" and "risk_stale" (an older state loads with none: its next refresh computes
# drops_on, says so in a customer-tiers message, and warns about a date within warn_days once);
# 6 is the binary layout of this module's docstring (the same fields as 5)
JSON_VERSIONS = (1, 2, 3, 4, 5)
V6 = b"\x06"
AUDIT_KEYS = ("ts", "event_id", "occurred_at", "action", "policy", "tier", "reason", "actor")


def dump_state(state: CustomerState) -> bytes:
    """Serialise a customer's state (version 6)."""
    out = Packer(state.as_of)
    _dump_body(out, state)
    _dump_tail(out, state)
    return V6 + out.bytes()


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a dump's tail (the tier at risk) begins, for :func:`redump_tail`."""

    at: int  # the tail's offset in the dump
    count: int  # how many strings the dump had numbered before it
    names: tuple[str, ...]  # the strings a tail may write (dump_state_marked)
    refs: tuple[int, ...]  # the number of each of ``names`` before the tail, or -1


def dump_state_marked(state: CustomerState, names: tuple[str, ...]) -> tuple[bytes, Mark]:
    """:func:`dump_state`, and the mark of its tail; ``names``: every string a later tail
    may write (the policies' names and their tiers' names)."""
    out = Packer(state.as_of)
    _dump_body(out, state)
    refs = out.refs
    mark = Mark(len(out.buf) + 1, len(refs), names, tuple(refs.get(s, -1) for s in names))
    _dump_tail(out, state)
    return V6 + out.bytes(), mark


def redump_tail(data: bytes, start: int, mark: Mark, state: CustomerState) -> bytes | None:
    """``dump_state(state)``, for a state whose dump is ``data[start:]`` (marked ``mark``)
    but for its tail, the tier at risk (``risk``, ``risk_stale``): the body
    is copied, only the tail is encoded again. None if the tail would write a string not
    in the mark's names (then dump it whole). A refresh of the tier at risk changes nothing else
    (grader.core.risk.refresh_risk), so the worker stores a refreshed customer so
    (docs/performance.md, "Storing a refresh")."""
    known = set(mark.names)
    for policy, r in state.risk.items():
        if policy not in known or (r.to_tier is not None and r.to_tier not in known):
            return None
    out = Packer(state.as_of)
    out.buf = bytearray(data[start + 1:start + mark.at])
    refs: dict[Any, int] = {s: n for s, n in zip(mark.names, mark.refs, strict=True) if n >= 0}
    for n in range(mark.count - len(refs)):
        refs[n] = -1  # the strings numbered before the tail but not in names: only counted
    out.refs = refs
    _dump_tail(out, state)
    return V6 + out.bytes()


def _dump_body(out: Packer, state: CustomerState) -> None:
    """Every field before the tier at risk."""
    out.value(state.customer_id)
    out.value(state.as_of)
    out.value(Instant.of(state.horizon))
    out.value(Instant.of(state.first_activity))
    out.value(Instant.of(state.last_sale))
    out.value(state.lifetime_sales)
    _dump_seen(out, state.seen, state.digests)
    _dump_months(out, state.months)
    _dump_interactions(out, state.interactions)
    _dump_invoices(out, state.invoices)
    out.value({k: [Instant(v[0]), *v[1:]] for k, v in state.assessments.items()})
    out.value({k: [Instant(v[0]), *v[1:]] for k, v in state.pins.items()})
    out.value(None if state.blacklist is None else [Instant(state.blacklist[0]),
                                                     *state.blacklist[1:]])
    out.value([_audit_row(a) for a in state.audit])
    _dump_tiers(out, state.tiers)
    out.value({i: [Instant.of(t.opened_at), Instant(t.last_open), t.last_open_id, t.queue,
                   t.subject, Instant.of(t.closed_at)] for i, t in state.tickets.items()})
    out.uint(len(state.graded_under))
    for policy, (version, digest) in state.graded_under.items():
        out.text(policy)
        out.text(version)
        out.text(digest)


def _dump_tail(out: Packer, state: CustomerState) -> None:
    """The tier at risk, last: a refresh changes only this (redump_tail)."""
    _dump_risk(out, state.risk)
    out.value(state.risk_stale)


def _dump_seen(out: Packer, seen: dict[str, int], digests: dict[str, int]) -> None:
    """The dedup table, oldest first: its size and form, then its ids and their occurred_at;
    then the digests, 4 bytes each in the same order when every id has one (else a map, as
    a version 1 state's ids have none).

    The compact form, when every id is a canonical UUID met here first and every instant a
    whole second within 68 years of as_of (the common case): the ids' 16 bytes each, then
    4 bytes each of seconds before as_of. Else each id (a tagged string) and its instant.
    """
    order = sorted(seen.items(), key=lambda item: (item[1], item[0]))
    out.uint(len(order))
    buf, refs, base = out.buf, out.refs, out.base
    seconds = [(base - ts) // US for _eid, ts in order]
    if (order and all(len(eid) == 36 and _UUID.fullmatch(eid) and eid not in refs
                      for eid, _ts in order)
            and all((base - ts) % US == 0 for _eid, ts in order)
            and min(seconds) >= -(2**31) and max(seconds) < 2**31):
        buf.append(COMPACT)
        for eid, _ts in order:
            refs[eid] = len(refs)
        buf += bytes.fromhex("".join(eid for eid, _ts in order).replace("-", ""))
        buf += struct.pack(f">{len(order)}i", *seconds)
    else:
        buf.append(TAGGED)
        for eid, ts in order:
            out.text(eid)
            out.instant(ts)
    if digests.keys() == seen.keys():
        out.value(struct.pack(f">{len(order)}I", *[digests[eid] for eid, _ts in order]))
    else:
        out.value(digests)


def _load_seen(src: Unpacker, state: CustomerState) -> None:
    count = src.uint()
    form = src.data[src.pos]
    src.pos += 1
    if form == COMPACT:
        h = src.take(16 * count).hex()
        ids = [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-"
               f"{h[i + 20:i + 32]}" for i in range(0, 32 * count, 32)]
        src.texts += ids
        base = src.base
        seconds = struct.unpack(f">{count}i", src.take(4 * count))
        state.seen = {eid: base - s * US for eid, s in zip(ids, seconds, strict=True)}
    elif form == TAGGED:
        ids = []
        for _ in range(count):
            eid = src.value()
            ids.append(eid)
            state.seen[eid] = src.instant()
    else:
        raise ValueError(f"unknown form {form} of the dedup table")
    digests = src.value()
    if isinstance(digests, bytes):
        state.digests = dict(zip(ids, struct.unpack(f">{len(ids)}I", digests), strict=True))
    else:
        state.digests = digests


def _dump_months(out: Packer, months: dict[str, dict[int, list[int]]]) -> None:
    """Per timezone: its month buckets (the month, as a step from the one before, and the
    bucket's numbers), untagged."""
    out.uint(len(months))
    for tz, by_month in months.items():
        out.text(tz)
        out.uint(len(by_month))
        before = 0
        for month, bucket in by_month.items():
            out.sints((month - before, len(bucket), *bucket))
            before = month


def _load_months(src: Unpacker) -> dict[str, dict[int, list[int]]]:
    months: dict[str, dict[int, list[int]]] = {}
    for _ in range(src.uint()):
        by_month = months[src.value()] = {}
        month = 0
        for _ in range(src.uint()):
            step, size = src.sints(2)
            month += step
            by_month[month] = src.sints(size)
    return months


def _dump_interactions(out: Packer, inter: dict[str, dict[str, dict[int, int]]]) -> None:
    """Per timezone and kind: (month, count) pairs, untagged."""
    out.uint(len(inter))
    for tz, kinds in inter.items():
        out.text(tz)
        out.uint(len(kinds))
        for kind, counts in kinds.items():
            out.text(kind)
            out.uint(len(counts))
            out.sints([x for item in counts.items() for x in item])


def _load_interactions(src: Unpacker) -> dict[str, dict[str, dict[int, int]]]:
    inter: dict[str, dict[str, dict[int, int]]] = {}
    for _ in range(src.uint()):
        kinds = inter[src.value()] = {}
        for _ in range(src.uint()):
            kind = src.value()
            flat = src.sints(2 * src.uint())
            kinds[kind] = dict(zip(flat[::2], flat[1::2], strict=True))
    return inter


def _dump_invoices(out: Packer, invoices: dict[str, Invoice]) -> None:
    """Per invoice: its sales, then its payments, each (occurred_at, event id, amount)."""
    out.uint(len(invoices))
    for invoice_id, invoice in invoices.items():
        out.text(invoice_id)
        for entries in (invoice.sales, invoice.payments):
            out.uint(len(entries))
            for ts, eid, amount in entries:
                out.instant(ts)
                out.text(eid)
                out.sints((amount,))


def _load_invoices(src: Unpacker) -> dict[str, Invoice]:
    invoices = {}
    for _ in range(src.uint()):
        invoice_id = src.value()
        sales, payments = ([(src.instant(), src.value(), src.sints(1)[0])
                            for _ in range(src.uint())] for _ in range(2))
        invoices[invoice_id] = Invoice(sales, payments)
    return invoices


def _dump_tiers(out: Packer, tiers: dict[str, TierState]) -> None:
    """Per policy: tier, score (numerator, denominator), sequence, changed_at, pinned."""
    out.uint(len(tiers))
    for policy, t in tiers.items():
        out.text(policy)
        out.text(t.tier)
        out.sints((*t.score, t.sequence, t.pinned))
        out.instant(t.changed_at)


def _load_tiers(src: Unpacker) -> dict[str, TierState]:
    tiers = {}
    for _ in range(src.uint()):
        policy, tier = src.value(), src.value()
        num, den, sequence, pinned = src.sints(4)
        tiers[policy] = TierState(tier, (num, den), sequence, src.instant(), bool(pinned))
    return tiers


def _dump_risk(out: Packer, risk: dict[str, Risk]) -> None:
    """Per policy: drops_on (a day number, or None), to_tier, the days warned about."""
    out.uint(len(risk))
    for policy, r in risk.items():
        out.text(policy)
        out.value(r.drops_on)
        out.value(r.to_tier)
        out.uint(len(r.warned))
        out.sints(r.warned)


def _load_risk(src: Unpacker) -> dict[str, Risk]:
    risk = {}
    for _ in range(src.uint()):
        policy, drops_on, to_tier = src.value(), src.value(), src.value()
        risk[policy] = Risk(drops_on, to_tier, src.sints(src.uint()))
    return risk


def _audit_row(entry: dict[str, Any]) -> Any:
    if tuple(entry) == AUDIT_KEYS:
        return [Instant(entry["ts"]), *(entry[k] for k in AUDIT_KEYS[1:])]
    return entry  # not written by this version: kept as it is


def load_state(data: bytes) -> CustomerState:
    """Rebuild a customer's state from ``dump_state`` output of any version (1-6)."""
    if data[:1] == V6:
        try:
            return _load_v6(data)
        except (IndexError, KeyError, TypeError, ValueError, struct.error) as exc:
            raise ValueError(f"a corrupt state (codec v6): {exc}") from None
    raw: dict[str, Any] = orjson.loads(data)
    if raw.get("v") not in JSON_VERSIONS:
        raise ValueError(f"unsupported state version {raw.get('v')!r}")
    return _load_json(raw)


def _load_v6(data: bytes) -> CustomerState:
    src = Unpacker(data, 1)
    customer_id = src.value()
    as_of = src.value()
    src.base = as_of
    state = CustomerState(customer_id, as_of=as_of, horizon=src.value(),
                          first_activity=src.value(), last_sale=src.value(),
                          lifetime_sales=src.value())
    _load_seen(src, state)
    state.months = _load_months(src)
    state.interactions = _load_interactions(src)
    state.invoices = _load_invoices(src)
    state.assessments = {k: tuple(v) for k, v in src.value().items()}
    state.pins = {k: tuple(v) for k, v in src.value().items()}
    blacklist = src.value()
    state.blacklist = None if blacklist is None else tuple(blacklist)
    state.audit = [dict(zip(AUDIT_KEYS, a, strict=True)) if isinstance(a, list) else a
                   for a in src.value()]
    state.tiers = _load_tiers(src)
    state.tickets = {i: Ticket(*t) for i, t in src.value().items()}
    state.graded_under = {src.value(): (src.value(), src.value()) for _ in range(src.uint())}
    state.risk = _load_risk(src)
    state.risk_stale = src.value()
    src.done()
    return state


def dump_state_v5(state: CustomerState) -> bytes:
    """The version 5 layout (JSON), as written before version 6: kept to compare sizes
    (bench/state_bench.py) and to make old-version fixtures in the tests."""
    return orjson.dumps(
        {
            "v": 5,
            "id": state.customer_id,
            "as_of": state.as_of,
            "horizon": state.horizon,
            "seen": state.seen,
            "digests": state.digests,
            "first": state.first_activity,
            "last_sale": state.last_sale,
            "lifetime": state.lifetime_sales,
            "months": {tz: {str(m): b for m, b in by.items()} for tz, by in state.months.items()},
            "inter": {
                tz: {k: {str(m): c for m, c in counts.items()} for k, counts in kinds.items()}
                for tz, kinds in state.interactions.items()
            },
            "invoices": {
                i: {"s": inv.sales, "p": inv.payments} for i, inv in state.invoices.items()
            },
            "assess": state.assessments,
            "pins": state.pins,
            "blacklist": state.blacklist,
            "audit": state.audit,
            "tiers": {
                p: [t.tier, *t.score, t.sequence, t.changed_at, t.pinned]
                for p, t in state.tiers.items()
            },
            "tickets": {
                i: [t.opened_at, t.last_open, t.last_open_id, t.queue, t.subject, t.closed_at]
                for i, t in state.tickets.items()
            },
            "under": state.graded_under,
            "risk": {p: [r.drops_on, r.to_tier, r.warned] for p, r in state.risk.items()},
            "risk_stale": state.risk_stale,
        }
    )


def _load_json(raw: dict[str, Any]) -> CustomerState:
    """A version 1-5 state (JSON)."""
    state = CustomerState(
        raw["id"],
        as_of=raw["as_of"],
        horizon=raw["horizon"],
        seen=raw["seen"],
        digests=raw.get("digests", {}),
        first_activity=raw["first"],
        last_sale=raw["last_sale"],
        lifetime_sales=raw["lifetime"],
    )
    state.months = {tz: {int(m): b for m, b in by.items()} for tz, by in raw["months"].items()}
    state.interactions = {
        tz: {k: {int(m): c for m, c in counts.items()} for k, counts in kinds.items()}
        for tz, kinds in raw["inter"].items()
    }
    state.invoices = {
        i: Invoice(
            [tuple(e) for e in inv["s"]],
            [tuple(e) for e in inv["p"]],
        )
        for i, inv in raw["invoices"].items()
    }
    state.assessments = {k: tuple(v) for k, v in raw["assess"].items()}
    state.pins = {k: tuple(v) for k, v in raw["pins"].items()}
    state.blacklist = tuple(raw["blacklist"]) if raw["blacklist"] else None
    state.audit = raw["audit"]
    state.tiers = {
        p: TierState(t[0], (t[1], t[2]), t[3], t[4], t[5]) for p, t in raw["tiers"].items()
    }
    state.tickets = {i: Ticket(*t) for i, t in raw.get("tickets", {}).items()}
    state.graded_under = {p: (v[0], v[1]) for p, v in raw.get("under", {}).items()}
    state.risk = {p: Risk(r[0], r[1], list(r[2])) for p, r in raw.get("risk", {}).items()}
    state.risk_stale = raw.get("risk_stale", False)
    return state


# --- the tagged values of version 6 -------------------------------------------------------
# One byte says what follows. A string's first occurrence is written out and numbered (in
# the order met, which reading and writing share); every later one is its number.
NONE, FALSE, TRUE, INT, INSTANT, TEXT, UUID, HEX, REF, LIST, DICT, BYTES = range(12)
SMALL_DICT, SMALL_LIST, SMALL_INT, SMALL_REF = 0x10, 0x20, 0x40, 0x80  # + n (0-15/31/63/127)
_HEX = re.compile(r"(?:[0-9a-f]{2}){2,}")  # lowercase hex: half the bytes give it back
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # canonical
US = 1_000_000
TAGGED, COMPACT = 0, 1  # the forms of the dedup table (_dump_seen)


class Instant(int):
    """An instant (us) to write relative to the state's as_of, in seconds when whole."""

    __slots__ = ()

    @classmethod
    def of(cls, value: int | None) -> Instant | None:
        return None if value is None else cls(value)


class Packer:
    """Writes tagged values (module comment above) into one buffer."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.buf = bytearray()
        # string -> its number; redump_tail adds numbers (int keys) for strings not kept
        self.refs: dict[Any, int] = {}

    def bytes(self) -> bytes:
        return bytes(self.buf)

    def uint(self, n: int) -> None:
        buf = self.buf
        while n >= 0x80:
            buf.append(n & 0x7F | 0x80)
            n >>= 7
        buf.append(n)

    def sints(self, values: Any) -> None:
        """Whole numbers, zigzag varints, untagged."""
        buf = self.buf
        for v in values:
            n = v << 1 if v >= 0 else (-v << 1) - 1
            while n >= 0x80:
                buf.append(n & 0x7F | 0x80)
                n >>= 7
            buf.append(n)

    def instant(self, ts: int) -> None:
        """``ts`` relative to the base, in whole seconds when it can (the low bit says)."""
        delta = self.base - ts
        if delta % US:
            self.uint((delta << 1 if delta >= 0 else (-delta << 1) - 1) << 1 | 1)
        else:
            delta //= US
            self.uint((delta << 1 if delta >= 0 else (-delta << 1) - 1) << 1)

    def value(self, v: Any) -> None:
        buf = self.buf
        kind = type(v)
        if kind is str:
            self.text(v)
        elif kind is Instant:
            buf.append(INSTANT)
            self.instant(v)
        elif kind is int:
            if 0 <= v < 64:
                buf.append(SMALL_INT + v)
            else:
                buf.append(INT)
                self.uint(v << 1 if v >= 0 else (-v << 1) - 1)
        elif v is None:
            buf.append(NONE)
        elif kind is bool:
            buf.append(TRUE if v else FALSE)
        elif kind is list or kind is tuple:
            if len(v) < 32:
                buf.append(SMALL_LIST + len(v))
            else:
                buf.append(LIST)
                self.uint(len(v))
            for item in v:
                self.value(item)
        elif kind is dict:
            if len(v) < 16:
                buf.append(SMALL_DICT + len(v))
            else:
                buf.append(DICT)
                self.uint(len(v))
            for key, item in v.items():
                self.value(key)
                self.value(item)
        elif kind is bytes:
            buf.append(BYTES)
            self.uint(len(v))
            buf += v
        else:
            raise TypeError(f"cannot store a {kind.__name__} in a state")

    def text(self, s: str) -> None:
        ref = self.refs.get(s)
        buf = self.buf
        if ref is not None:
            if ref < 128:
                buf.append(SMALL_REF + ref)
            else:
                buf.append(REF)
                self.uint(ref)
            return
        self.refs[s] = len(self.refs)
        if len(s) == 36 and _UUID.fullmatch(s):
            buf.append(UUID)
            buf += bytes.fromhex(s.replace("-", ""))
        elif _HEX.fullmatch(s):
            raw = bytes.fromhex(s)
            buf.append(HEX)
            self.uint(len(raw))
            buf += raw
        else:
            raw = s.encode("utf-8", "surrogatepass")
            buf.append(TEXT)
            self.uint(len(raw))
            buf += raw


class Unpacker:
    """Reads what ``Packer`` wrote, from ``pos`` on; ``base``: the as_of, once read."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos
        self.base = 0
        self.texts: list[str] = []

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{len(self.data) - self.pos} bytes after the state's last field")

    def uint(self) -> int:
        data, pos = self.data, self.pos
        byte = data[pos]
        pos += 1
        n, shift = byte & 0x7F, 7
        while byte & 0x80:
            byte = data[pos]
            pos += 1
            n |= (byte & 0x7F) << shift
            shift += 7
        self.pos = pos
        return n

    def take(self, size: int) -> bytes:
        raw = self.data[self.pos:self.pos + size]
        if len(raw) != size:
            raise ValueError("the state ends inside a value")
        self.pos += size
        return raw

    def sints(self, count: int) -> list[int]:
        out = []
        data, pos = self.data, self.pos
        for _ in range(count):
            byte = data[pos]
            pos += 1
            n, shift = byte & 0x7F, 7
            while byte & 0x80:
                byte = data[pos]
                pos += 1
                n |= (byte & 0x7F) << shift
                shift += 7
            out.append(n >> 1 if not n & 1 else -((n + 1) >> 1))
        self.pos = pos
        return out

    def instant(self) -> int:
        zz = self.uint()
        n = zz >> 1
        delta = n >> 1 if not n & 1 else -((n + 1) >> 1)
        return self.base - (delta if zz & 1 else delta * US)

    def value(self) -> Any:
        tag = self.data[self.pos]
        self.pos += 1
        if tag >= SMALL_REF:
            return self.texts[tag - SMALL_REF]
        if tag >= SMALL_INT:
            return tag - SMALL_INT
        if tag >= SMALL_LIST:
            return [self.value() for _ in range(tag - SMALL_LIST)]
        if tag >= SMALL_DICT:
            return self._dict(tag - SMALL_DICT)
        if tag == INSTANT:
            return self.instant()
        if tag == INT:
            n = self.uint()
            return n >> 1 if not n & 1 else -((n + 1) >> 1)
        if tag <= TRUE:
            return (None, False, True)[tag]
        if tag == REF:
            return self.texts[self.uint()]
        if tag == LIST:
            return [self.value() for _ in range(self.uint())]
        if tag == DICT:
            return self._dict(self.uint())
        if tag in (TEXT, HEX, UUID, BYTES):
            raw = self.take(16 if tag == UUID else self.uint())
            if tag == BYTES:
                return raw
            if tag == UUID:
                h = raw.hex()
                text = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            else:
                text = raw.hex() if tag == HEX else raw.decode("utf-8", "surrogatepass")
            self.texts.append(text)
            return text
        raise ValueError(f"unknown tag {tag:#x} at byte {self.pos - 1} of a state")

    def _dict(self, n: int) -> dict[Any, Any]:
        out = {}
        for _ in range(n):
            key = self.value()
            out[key] = self.value()
        return out
