"""start_detached: a task that hands its result over as shield would, a loop turn sooner."""

from __future__ import annotations

import asyncio

import pytest

from etrn_bridge.handoff import start_detached


async def test_the_awaiter_resumes_on_the_loop_turn_after_the_work_ends() -> None:
    turns = 0
    ended_at: list[int] = []

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def work() -> str:
        await asyncio.sleep(0)
        ended_at.append(turns)
        return "done"

    counter = asyncio.ensure_future(count_turns())
    task, handed = start_detached(work())
    assert await handed == "done"
    # asyncio.shield(task) resumes its awaiter two turns later: the task's done
    # callbacks run a turn after it ends, and shield's wakes the awaiter after that.
    assert turns - ended_at[0] == 1
    assert task.done()
    counter.cancel()


async def test_an_awaiter_that_is_cancelled_leaves_the_work_running() -> None:
    gate = asyncio.Event()

    async def work() -> str:
        await gate.wait()
        return "flushed"

    task, handed = start_detached(work())
    awaiter = asyncio.ensure_future(handed)
    await asyncio.sleep(0)
    awaiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await awaiter
    assert handed.cancelled() and not task.done()
    gate.set()
    assert await task == "flushed"  # and no error for the future already cancelled


async def test_work_that_is_cancelled_cancels_what_its_awaiter_waits_on() -> None:
    task, handed = start_detached(asyncio.Event().wait())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handed
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_work_that_fails_hands_its_error_over() -> None:
    async def work() -> None:
        await asyncio.sleep(0)
        raise LookupError("broken backend")

    task, handed = start_detached(work())
    with pytest.raises(LookupError, match="broken backend"):
        await handed
    with pytest.raises(LookupError):
        await task


async def test_work_cancelled_before_it_ran_does_not_leave_its_awaiter_waiting() -> None:
    async def work() -> str:
        return "never"

    task, handed = start_detached(work())
    task.cancel()  # e.g. a drain that cuts a request just handed over
    with pytest.raises(asyncio.CancelledError):  # not TimeoutError: it was never set
        async with asyncio.timeout(5):
            await handed
