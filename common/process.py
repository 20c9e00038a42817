"""Child processes that end with their parent."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from collections.abc import Callable

__all__ = ["die_with_parent", "stop"]


def die_with_parent() -> Callable[[], None]:
    """For ``preexec_fn``: the kernel sends the child SIGTERM when this process dies (even by
    SIGKILL), so no orphan keeps serving and holding ports (Linux ``PR_SET_PDEATHSIG``)."""
    parent = os.getpid()
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: after fork, only call it
    except (OSError, AttributeError):
        prctl = None  # not Linux: a parent's crash leaves orphans

    def arrange() -> None:
        if prctl is None:
            return
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arrange


async def stop(process: asyncio.subprocess.Process | None, grace_s: float) -> bool:
    """SIGTERM, then SIGKILL after ``grace_s``; True when it had to be killed."""
    if process is None or process.returncode is not None:
        return False
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=grace_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        return True
    return False
