"""Python 3.10 (JetPack 6) lacks asyncio.TaskGroup and asyncio.timeout; the backport fills in."""

import sys

if sys.version_info >= (3, 11):
    from asyncio import TaskGroup, timeout
else:  # pragma: no cover - exercised on Jetson's Python 3.10
    from taskgroup import TaskGroup, timeout  # type: ignore[import-not-found,no-redef,unused-ignore]

__all__ = ["TaskGroup", "timeout"]
