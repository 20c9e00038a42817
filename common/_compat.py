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

__all__ = ["TaskGroup", "timeout", "wait_at_most"]


async def wait_at_most(awaitable: Awaitable[object], seconds: float) -> bool:
    """Awaits ``awaitable`` for at most ``seconds``; True if it finished. Never loses a cancellation."""
    try:
        async with timeout(seconds):
            await awaitable
    except (TimeoutError, asyncio.TimeoutError):
        return False
    return True
