"""The suite's check that nothing of recomamp's holds the event loop: a hold counts, a wait for a CPU does not."""

from __future__ import annotations

import asyncio
import time

from recomamp.testing import RunQueueWait, loop_holds


async def test_a_callback_that_blocks_holds_the_loop_and_is_named() -> None:
    loop = asyncio.get_running_loop()

    def blocking_read() -> None:
        time.sleep(0.3)  # a thread asleep in a blocking call is not on a run queue: every second of it counts

    with loop_holds(loop, 0.25) as holds:
        loop.call_soon(blocking_read)
        await asyncio.sleep(0.05)
    assert [h.callback for h in holds if "blocking_read" in h.callback], holds
    assert all(h.held >= 0.25 for h in holds)


async def test_the_time_a_callback_waited_for_a_cpu_is_not_a_hold() -> None:
    loop = asyncio.get_running_loop()
    waited = 0.0

    def preempted() -> None:
        nonlocal waited
        time.sleep(0.3)
        waited += 0.3  # as though another process had the CPU all along

    with loop_holds(loop, 0.25, run_queue_wait=lambda: waited) as holds:
        loop.call_soon(preempted)
        await asyncio.sleep(0.05)
    assert not [h for h in holds if "preempted" in h.callback], holds


async def test_short_callbacks_are_not_holds_and_the_loop_is_restored() -> None:
    loop = asyncio.get_running_loop()
    run_before = asyncio.Handle._run
    with loop_holds(loop, 0.25) as holds:
        for _ in range(100):
            await asyncio.sleep(0)
    assert holds == []
    assert asyncio.Handle._run is run_before


def test_the_run_queue_wait_of_this_thread_is_read_and_never_goes_back() -> None:
    waited = RunQueueWait()
    try:
        first = waited()
        sum(range(2_000_000))
        assert waited() >= first >= 0.0
    finally:
        waited.close()


async def test_the_callback_that_ends_the_watch_is_not_timed_against_a_closed_reader() -> None:
    loop = asyncio.get_running_loop()
    watch = loop_holds(loop, 0.0)
    holds = watch.__enter__()

    def end_the_watch() -> None:
        watch.__exit__(None, None, None)

    loop.call_soon(end_the_watch)
    await asyncio.sleep(0.05)
    assert not [h for h in holds if "end_the_watch" in h.callback], holds
