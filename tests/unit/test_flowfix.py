"""grader/stream/faust_patches/flowfix.py: a resume clears the queues only after a suspend."""

from __future__ import annotations

import asyncio

from mode.utils.queues import FlowControlEvent, FlowControlQueue

from grader.stream.faust_patches.flowfix import keep_records_on_repeated_resume


def test_records_queued_while_flowing_survive_a_second_resume() -> None:
    async def scenario() -> list[list[str]]:
        flow = FlowControlEvent()  # suspended, as Faust's is at start
        queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        keep_records_on_repeated_resume(flow)
        seen = []
        queue.put_nowait("before the rebalance")
        flow.resume()  # the first resume after a suspend: stale records go
        seen.append(list(queue._queue))  # type: ignore[attr-defined]
        queue.put_nowait("fetched in this generation")
        flow.resume()  # Faust resumes again while flowing: nothing is dropped
        seen.append(list(queue._queue))  # type: ignore[attr-defined]
        flow.suspend()
        flow.resume()  # the next rebalance's resume clears again
        seen.append(list(queue._queue))  # type: ignore[attr-defined]
        return seen

    assert asyncio.run(scenario()) == [[], ["fetched in this generation"], []]


def test_without_the_fix_a_second_resume_drops_fresh_records() -> None:
    async def scenario() -> list[str]:
        flow = FlowControlEvent()
        queue: FlowControlQueue[str] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
        flow.resume()
        queue.put_nowait("fetched in this generation")
        flow.resume()
        return list(queue._queue)  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == []  # mode as it is: what flowfix.py exists for
