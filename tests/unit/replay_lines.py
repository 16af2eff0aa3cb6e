"""A table of tricky input lines for the sharded replay tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from grader.core.eventfile import MAX_EVENT_BYTES, Line, LongLine
from grader.core.events import RAW_KEPT

ROOT = Path(__file__).resolve().parents[2]

_SALE = '"type":"sale","occurred_at":"2026-01-0{d}T10:00:00Z","amount":"1{d}.50","currency":"CNY"'
LINES: list[bytes] = [
    *(f'{{"event_id":"s{c}{d}","customer_id":"C{c}",{_SALE.format(d=d)}}}'.encode()
      for c in range(8) for d in range(1, 4)),
    b'{"event_id":"dup","customer_id":"C1","customer_id":"C2",' + _SALE.format(d=5).encode() + b"}",
    b'{"event_id":"esc","customer_\\u0069d":"C3",' + _SALE.format(d=6).encode() + b"}",
    b'{"event_id":"nest","meta":{"customer_id":"C4"},' + _SALE.format(d=7).encode() + b"}",
    b'{"event_id":"sp", "customer_id" : "C5" ,' + _SALE.format(d=8).encode() + b"}",
    b'{"event_id":"num","customer_id":5,' + _SALE.format(d=9).encode() + b"}",
    b'{"event_id":"bad","customer_id":"C 6",' + _SALE.format(d=1).encode() + b"}",
    b'[{"customer_id":"C1"}]',
    b'"customer_id"',
    b'{"customer_id":"C1"',
    b"not json",
    b"",
    b'{"event_id":"t1","type":"ticket_opened","customer_id":"C2",'
    b'"occurred_at":"2026-01-02T10:00:00Z","ticket_id":"T1"}',
    b'{"event_id":"i1","type":"interaction","customer_id":"C\\u0033","kind":"referral",'
    b'"occurred_at":"2026-01-03T10:00:00Z"}',
]

# Lines at and past the bound (grader.core.eventfile): a valid sale padded to exactly the
# largest event (graded), a line of NULs over the dead-letter cap but under the bound,
# and a 2 GB line of NULs as read_lines gives it (never held whole).
_PADDED = (f'{{"event_id":"pad","customer_id":"C9",{_SALE.format(d=2)},"pad":"'.encode())
LONG_LINES: list[Line] = [
    _PADDED + b"x" * (MAX_EVENT_BYTES - len(_PADDED) - 2) + b'"}',
    b"\0" * (RAW_KEPT + 1),
    LongLine(b"\0" * RAW_KEPT, 2 << 30, hashlib.sha256(b"").hexdigest()),
]
