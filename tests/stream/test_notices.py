"""The worker's warnings about messages it did not apply are rate-limited."""

from __future__ import annotations

import logging

import pytest

from grader.stream.notices import Notices

LOG = logging.getLogger("test.notices")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rejections_are_logged_one_by_one_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    notices = Notices(LOG, interval=60, burst=3, clock=clock)
    with caplog.at_level(logging.WARNING, LOG.name):
        for offset in range(10):
            notices.rejected("g.transactions", 2, offset, "bad_json" if offset % 2 else "no_value")
        notices.expired()
        notices.expired()
        notices.conflict("g.interactions", 1, 77)
        notices.conflict("g.interactions", 1, 78)
        clock.now = 59.9
        notices.flush()
        assert len(caplog.records) == 3  # the interval is not over
        clock.now = 60.0
        notices.flush()
        notices.flush()  # nothing new: no second summary
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["rejected g.transactions[2]@0: no_value",
                         "rejected g.transactions[2]@1: bad_json",
                         "rejected g.transactions[2]@2: no_value"]
    assert lines[3:] == [
        "in the last 60 s: 2 expired events not applied; 2 duplicates whose content differs "
        "from the event applied under their id (e.g. g.interactions[1]@77), not applied; "
        "7 more rejected messages (bad_json: 4, no_value: 3)"]


def test_a_new_interval_logs_rejections_again(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    notices = Notices(LOG, interval=10, burst=1, clock=clock)
    with caplog.at_level(logging.WARNING, LOG.name):
        notices.rejected("t", 0, 1, "bad_json")
        notices.rejected("t", 0, 2, "bad_json")
        clock.now = 10
        notices.flush()
        notices.rejected("t", 0, 3, "bad_json")
    assert [r.getMessage() for r in caplog.records] == [
        "rejected t[0]@1: bad_json", "in the last 10 s: 1 more rejected messages (bad_json: 1)",
        "rejected t[0]@3: bad_json"]
