"""A fix to Faust's flow control: records fetched in this generation are never discarded.

Faust (faust-streaming 0.15) suspends its flow control when a rebalance
starts and resumes it several times while the new assignment recovers
(faust/tables/recovery.py): once when active changelog recovery starts,
again when standby partitions start, and again in ``on_recovery_completed``.
Each ``FlowControlEvent.resume()`` of mode also *clears* every queue made
with ``clear_on_resume=True``: the changelog queue that feeds table
recovery and the agents' stream queues.

Clearing on the first resume is what it is for: it drops records fetched
before the rebalance. Clearing on the later ones drops records the consumer
fetched *after* it was resumed and seeked in this generation, and the
consumer's position has moved past them, so nothing reads them again:

- standby changelog records fetched while ``on_recovery_completed`` runs
  (it awaits the ``on_rebalance_complete`` signal, table callbacks and a
  seek before it resumes the flow) are lost; later records then move the
  standby's stored offset past the gap, and when the standby becomes active
  its recovery starts after the gap. That is the loss of issue 11
  (docs/streaming.md, "Standby replicas and Faust's flow control");
  faust-streaming issue #212 reports the same symptom for global tables,
  and robinhood/faust PR #583 describes the clearing on resume;
- input records fetched between the seek to committed offsets and that
  last resume are lost too, until grader's repair of stalled partitions
  reads them again.

The fix: a resume while the flow is already resumed changes nothing (it
neither clears nor re-signals). A resume after a suspension clears as
before.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def keep_records_on_repeated_resume(flow: Any) -> None:
    """Make ``flow.resume()`` (mode's ``FlowControlEvent``) clear queues only after a suspend."""
    resume = flow.resume

    def resume_unless_flowing() -> None:
        if flow.is_active():
            kept = sum(queue.qsize() for queue in list(flow._queues))
            if kept:
                log.info("flow resumed while flowing: kept %d fetched records "
                         "(Faust would have dropped them)", kept)
            return
        resume()

    flow.resume = resume_unless_flowing
