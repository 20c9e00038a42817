"""Refusals of job documents no trusted operator is known to have sent, at a cost that does not last.

Anyone who may publish on the broker can retain junk job documents (unsigned, under an unknown key, a
bad signature, malformed, another site's) as fast as the broker takes them. Each is still refused, but
nothing of it is kept: the ledger is not written (only a trusted operator's document is worth a write),
its ``REJECTED`` status is not retained and goes out at most once a minute per job id
(:class:`Answered`), and the audit trail and the log get one ``fleet.job_refused`` per kind of reason a
minute, with how many there were and the first one's job id (:class:`RefusalTally`). What a document
claims about its sender is recorded only as ``claimed_operator``, in plain text (:func:`plain`), never
as the actor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import unicodedata
from collections.abc import Awaitable, Callable

__all__ = ["WINDOW_S", "Answered", "RefusalTally", "plain", "reason_kind"]

log = logging.getLogger(__name__)

WINDOW_S = 60.0  # one audit record per kind of reason, and one status per job id, this often
MAX_ANSWERED = 1000  # job ids answered within a window; past it a junk id goes unanswered (still audited)
_KINDS = ("unknown operator", "malformed")  # reasons that quote the document: grouped by their start


def plain(value: object, limit: int = 64) -> str | None:
    """A string of the network's fit for a record or a terminal: control and format characters out
    (escapes, newlines, bidirectional overrides), cut to ``limit``; None for anything else or nothing.

    >>> plain("\\x1b[31mroot\\n\\u202eadmin"), len(plain("x" * 100))
    ('[31mrootadmin', 64)
    >>> plain(7) is None, plain("\\x00") is None
    (True, True)
    """
    if not isinstance(value, str):
        return None
    kept = "".join(char for char in value[: limit * 8] if unicodedata.category(char)[0] != "C")[:limit]
    return kept or None


def reason_kind(reason: str) -> str:
    """Refusals counted together: ``unknown operator 'x'`` and ``unknown operator 'y'`` are one kind.

    >>> reason_kind("unknown operator 0123456789abcdef"), reason_kind("malformed: nonce is not 32 hex digits")
    ('unknown operator', 'malformed')
    >>> reason_kind("unsigned")
    'unsigned'
    """
    return next((kind for kind in _KINDS if reason.startswith(kind)), reason)


class Answered:
    """Job ids whose refusal was said within the last ``again_s``: one said again sooner is not.

    >>> answered = Answered(again_s=60)
    >>> answered.first_in_a_while("junk", now=0), answered.first_in_a_while("junk", now=30)
    (True, False)
    >>> answered.first_in_a_while("junk", now=61)
    True
    """

    def __init__(self, again_s: float = WINDOW_S, limit: int = MAX_ANSWERED) -> None:
        self.again_s, self.limit = again_s, limit
        self._at: dict[str, float] = {}  # in the order they were said: the oldest first

    def first_in_a_while(self, job_id: str, *, now: float | None = None) -> bool:
        at = time.monotonic() if now is None else now
        while self._at and at - next(iter(self._at.values())) >= self.again_s:
            del self._at[next(iter(self._at))]
        if job_id in self._at or len(self._at) >= self.limit:
            return False
        self._at[job_id] = at
        return True


@dataclasses.dataclass
class _Window:
    opened: float  # monotonic
    count: int = 0  # refusals since it opened, not recorded yet
    first: tuple[str, str, str | None, dict[str, str]] = ("", "", None, {})  # (target, reason, claimed, detail)


Record = Callable[..., Awaitable[None]]  # Service.audit(action, target, **detail)


class RefusalTally:
    """One ``action`` record (``fleet.job_refused``) per kind of reason per ``window_s``: the first
    refusal is recorded at once (count 1); those after it within the window are counted and recorded as
    one when it closes (the first one's target, reason and detail, and the count); :meth:`run` closes
    windows on time."""

    def __init__(self, record: Record, action: str = "fleet.job_refused", *, window_s: float = WINDOW_S) -> None:
        self.record, self.action, self.window_s = record, action, window_s
        self._windows: dict[str, _Window] = {}
        self._opened = asyncio.Event()

    async def add(self, target: str, reason: str, claimed_operator: str | None, **detail: str) -> None:
        kind = reason_kind(reason)
        window = self._windows.get(kind)
        if window is None:
            self._windows[kind] = _Window(time.monotonic())
            self._opened.set()
            await self._say((target, reason, claimed_operator, detail), 1)
            return
        if window.count == 0:
            window.first = (target, reason, claimed_operator, detail)
        window.count += 1

    async def run(self) -> None:
        """Forever: each window closed when its time is up (what it counted recorded)."""
        while True:
            if not self._windows:
                self._opened.clear()
                await self._opened.wait()
                continue
            due = min(window.opened for window in self._windows.values()) + self.window_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.close_due()

    async def close_due(self, now: float | None = None) -> None:
        at = time.monotonic() if now is None else now
        for kind, window in list(self._windows.items()):
            if at - window.opened < self.window_s:
                continue
            if window.count == 0:
                del self._windows[kind]  # a quiet window: the next refusal is recorded at once
                continue
            self._windows[kind] = _Window(at)  # the flood goes on: the next record in a window's time
            await self._say(window.first, window.count)

    async def _say(self, first: tuple[str, str, str | None, dict[str, str]], count: int) -> None:
        target, reason, claimed_operator, detail = first
        said = {**detail, "reason": reason, "claimed_operator": claimed_operator, "count": count}
        log.warning(f"{self.action}: no trusted operator's document", extra={"target": target, **said})
        await self.record(self.action, target, **said)
