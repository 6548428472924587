"""start_detached: handed over as shield would, without its extra turns; at once from a callback."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from etrn_bridge.handoff import start_detached

T = TypeVar("T")


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


def from_callback(function: Callable[[], T]) -> Awaitable[T]:
    """``function``'s result, called from a loop callback (no task running), as a
    hook connection's data_received calls the service."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[T] = loop.create_future()

    def call() -> None:
        result.set_result(function())

    loop.call_soon(call)
    return result


async def test_work_cancelled_before_it_went_on_is_cancelled_and_its_awaiter_too() -> None:
    seen: list[str] = []

    async def work() -> str:
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "never"

    task, handed = await from_callback(lambda: start_detached(work()))
    task.cancel()  # e.g. a drain that cuts a request just handed over
    with pytest.raises(asyncio.CancelledError):  # not TimeoutError: it was never set
        async with asyncio.timeout(5):
            await handed
    assert seen == ["cancelled"]  # as a task's coroutine would have been


async def test_from_a_callback_work_that_never_waits_is_done_at_once_without_a_task() -> None:
    async def work() -> str:
        return "denied"

    done, handed = await from_callback(lambda: start_detached(work()))
    assert done.done() and not isinstance(done, asyncio.Task)
    assert handed.result() == "denied"


async def test_from_a_task_the_work_gets_a_task_of_its_own() -> None:
    async def work() -> str:
        return "denied"

    task, handed = start_detached(work())  # this test runs in a task
    assert isinstance(task, asyncio.Task) and not task.done()
    assert await handed == "denied"


async def test_work_that_fails_at_once_hands_its_error_over() -> None:
    async def work() -> None:
        raise LookupError("broken policy")

    done, handed = await from_callback(lambda: start_detached(work()))
    assert done.done()
    with pytest.raises(LookupError, match="broken policy"):
        await handed


async def test_the_work_runs_in_a_copy_of_the_callers_context() -> None:
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="caller")
    seen: list[str] = []

    async def work() -> None:
        marker.set("work")
        await asyncio.sleep(0)
        seen.append(marker.get())  # in the task it went on in

    def start() -> tuple[asyncio.Future[None], asyncio.Future[None], str]:
        task, handed = start_detached(work())
        return task, handed, marker.get()  # its first step did not set the caller's

    task, handed, callers = await from_callback(start)
    await handed
    assert callers == "caller" and seen == ["work"] and isinstance(task, asyncio.Task)
