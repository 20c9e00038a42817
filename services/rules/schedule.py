"""When a rule is in force: its ``schedule`` windows (days and HH:MM, in the site's time zone)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from common.config.rules import ScheduleWindow

__all__ = ["in_schedule"]

DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def in_schedule(windows: Iterable[ScheduleWindow], when: dt.datetime) -> bool:
    """Whether ``when`` falls in any window; no windows means always. A window whose end is before its
    start wraps midnight and belongs to the day it starts on."""
    windows = list(windows)
    if not windows:
        return True
    minute = when.hour * 60 + when.minute
    today, yesterday = DAYS[when.weekday()], DAYS[(when.weekday() - 1) % 7]
    for window in windows:
        start = int(window.start[:2]) * 60 + int(window.start[3:])
        end = int(window.end[:2]) * 60 + int(window.end[3:])
        if start <= end:
            if today in window.days and start <= minute < end:
                return True
        elif (today in window.days and minute >= start) or (yesterday in window.days and minute < end):
            return True
    return False
