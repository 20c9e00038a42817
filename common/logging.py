"""Structured, rate-limited logs: ``key=value`` (or JSON) lines with ``service`` and ``camera`` on each.

>>> log = get_logger(__name__)
>>> # log.warning("camera stalled", extra={"camera": "dock-1", "seconds": 5.0})
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

__all__ = ["DropTally", "RateLimitFilter", "configure", "get_logger"]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_service = "-"


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


class RateLimitFilter(logging.Filter):
    """Lets one record per (logger, message, camera, app) through every ``interval_s`` at WARNING and up.

    The next record let through carries ``suppressed=N`` so nothing disappears silently.
    """

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg), str(getattr(record, "camera", "")), str(getattr(record, "app", "")))
        now = time.monotonic()
        last, suppressed = self._last.get(key, (-1e18, 0))
        if now - last < self.interval_s:
            self._last[key] = (last, suppressed + 1)
            return False
        if suppressed:
            record.suppressed = suppressed
        self._last[key] = (now, 0)
        if len(self._last) > 10_000:  # bounded: forget the oldest half
            for stale in sorted(self._last, key=lambda k: self._last[k][0])[:5_000]:
                del self._last[stale]
        return True


class DropTally:
    """What a bounded store dropped, as one warning at most every ``interval_s`` with the counts since
    the last one: a metric alone goes unseen in the logs, a line per drop floods them. A drop may bring
    its particulars (``add(kind, last_topic=...)``): the warning carries the newest one's.

    >>> tally = DropTally(logging.getLogger("doc"), "dropped", ("malformed", "too_large"))
    >>> tally.add("malformed", last_detail="not JSON"); tally.add("malformed"); tally.counts, tally.latest
    ({'malformed': 2, 'too_large': 0}, {'last_detail': 'not JSON'})
    """

    def __init__(
        self, logger: logging.Logger, message: str, kinds: tuple[str, ...], interval_s: float = 60.0, **context: Any
    ) -> None:
        self.logger = logger
        self.message = message
        self.kinds = kinds
        self.interval_s = interval_s
        self.context = context
        self.counts = dict.fromkeys(kinds, 0)
        self.latest: dict[str, Any] = {}  # the newest drop's particulars, since the last warning
        self._logged = -1e18

    def add(self, kind: str, count: int = 1, **particulars: Any) -> None:
        self.counts[kind] += count
        if particulars:
            self.latest = particulars

    def flush(self) -> None:
        """Logs the counts if any and the interval has passed (call after a drop, and now and then)."""
        now = time.monotonic()
        if any(self.counts.values()) and now - self._logged >= self.interval_s:
            self.logger.warning(self.message, extra={**self.counts, **self.context, **self.latest})
            self.counts = dict.fromkeys(self.kinds, 0)
            self.latest = {}
            self._logged = now


class _Formatter(logging.Formatter):
    def __init__(self, style: Literal["text", "json"]) -> None:
        super().__init__()
        self.style_name = style

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": _service,
            "camera": getattr(record, "camera", "-"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields.update((k, v) for k, v in vars(record).items() if k not in _STANDARD and k not in fields)
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if self.style_name == "json":
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def configure(service: str, level: str = "info", style: Literal["text", "json"] = "text") -> None:
    """Set up the root logger for one process; call once at start."""
    global _service
    _service = service
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(style))
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
