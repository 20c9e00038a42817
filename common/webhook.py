"""One way to POST an event to a webhook: rules' webhook action and the uplink's webhook sink.

One request, one answer: the body as ``application/json``, the caller's timeout, the response
closed at once. Redirects are urllib's default (a 301/302/303 is followed as a GET, a 307/308 is an
error), proxies come from the environment. What to do with a failure stays the caller's: rules
retries with a backoff, the uplink's sink tells a refusal of one event from an outage.

A webhook URL often carries its secret (``?token=...``, ``https://user:pw@host``), so every error
from here is a :class:`WebhookError` whose message went through :func:`common.urls.redact` and
whose cause is cut: neither a log line nor a traceback shows the URL's secrets.
"""

from __future__ import annotations

import asyncio
import http.client
import urllib.error
import urllib.parse
import urllib.request

from common.urls import redact
from contracts.errors import EdgeSightError

__all__ = ["WebhookError", "post_json"]

# 4xx answers that mean "not now" rather than "never this one": timeout, too early, too many requests
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})


class WebhookError(EdgeSightError):
    """A webhook POST failed: no answer (``status`` None: refused connection, timeout, DNS) or an
    HTTP error (``status`` and ``reason`` as the receiver answered)."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def refused(self) -> bool:
        """The receiver refuses this very request for good (a 4xx but 408, 425 and 429): sending it
        again cannot help, while anything else may pass later."""
        return self.status is not None and 400 <= self.status < 500 and self.status not in _RETRYABLE_CLIENT_ERRORS


async def post_json(url: str, body: bytes, timeout_s: float) -> None:
    """POSTs ``body`` (JSON) to ``url`` on a worker thread; returns on a 2xx, raises :class:`WebhookError`
    for anything else."""
    await asyncio.to_thread(_post, url, body, timeout_s)


def _post(url: str, body: bytes, timeout_s: float) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            pass
    except urllib.error.HTTPError as exc:  # before OSError: an HTTPError is one
        raise WebhookError(_scrubbed(str(exc), url), status=exc.code, reason=_scrubbed(str(exc.reason), url)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:  # no answer, a garbled one, an unusable URL
        raise WebhookError(_scrubbed(str(exc), url)) from None


def _scrubbed(text: str, url: str) -> str:
    """``text`` without ``url``'s secrets, whichever part of it the text quotes: its password, its
    query and fragment values, and its path (a Slack-style webhook's token is a path)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return redact(text, [url])
    values = [item.partition("=")[2] for item in f"{parts.query}&{parts.fragment}".split("&")]
    return redact(text, [url, parts.password, parts.path, *values])
