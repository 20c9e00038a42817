"""Python 3.10 (JetPack 6) lacks asyncio.TaskGroup and asyncio.timeout; the backport fills in.

``wait_at_most`` replaces ``asyncio.wait_for`` in loops: before Python 3.12, ``wait_for`` can swallow a
cancellation that arrives as the awaited thing completes (CPython gh-86296), and a loop around it then
never stops: a service that ignores SIGTERM.
"""

import asyncio
import sys
from collections.abc import Awaitable

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout
else:  # pragma: no cover - exercised on Jetson's Python 3.10
    from taskgroup import TaskGroup, timeout  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = ["TaskGroup", "raise_if_cancelled", "timeout", "wait_at_most"]


async def wait_at_most(awaitable: Awaitable[object], seconds: float) -> bool:
    """Awaits ``awaitable`` for at most ``seconds``; True if it finished. Never loses a cancellation."""
    try:
        async with timeout(seconds):
            await awaitable
    except (TimeoutError, asyncio.TimeoutError):
        return False
    return True


def raise_if_cancelled() -> None:
    """Raises CancelledError if this task was asked to stop and something it awaited swallowed the request:
    an ``asyncio.wait_for`` that completed as the cancellation arrived (gh-86296; aiomqtt's publish and
    subscribe wait that way). A loop calls this before it waits again, or it would wait for ever while
    its task says "cancelling". Python 3.10 cannot tell (no ``Task.cancelling``): there it does nothing."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError
