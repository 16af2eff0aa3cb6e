"""A table of tricky input lines for the sharded replay tests."""

from __future__ import annotations

from pathlib import Path

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
