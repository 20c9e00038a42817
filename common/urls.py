"""One way to show a URL (or a message that holds URLs) without its secrets.

A camera or webhook URL can carry a password (``rtsp://admin:pw@host``) and tokens in its query
(``?token=...``, ``X-Amz-Signature=...``). Everything that logs, publishes or shows a URL — ingest's
errors, ``edgesight detect``, the Panorama SDK's ``stream_uri``, the console, the audit trail — goes
through :func:`redact_url` / :func:`redact`. Query values are hidden unless their name is one cameras
use for plain stream selection, so an unknown token name is hidden too.

    >>> redact_url("rtsp://admin:pw@10.0.0.5/stream?token=abc&channel=1")
    'rtsp://admin:***@10.0.0.5/stream?token=***&channel=1'
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

__all__ = ["REDACTED", "redact", "redact_url"]

REDACTED = "***"
# Query parameters that select a stream on common cameras (Hikvision, Dahua, Axis, ONVIF): shown.
_PLAIN_PARAMETERS = frozenset(
    {
        "channel",
        "ch",
        "subtype",
        "stream",
        "streamtype",
        "profile",
        "resolution",
        "fps",
        "codec",
        "videocodec",
        "transport",
        "unicast",
        "proto",
        "camera",
        "tcp",
    }
)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """``url`` with its password and every query value but plain stream selectors replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host: show nothing of it
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if colon else f"{user}@{host}"
    query = "&".join(_redact_parameter(item) for item in parts.query.split("&")) if parts.query else ""
    # a fragment can carry a token too (OAuth's implicit flow)
    fragment = REDACTED if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _redact_parameter(item: str) -> str:
    name, equals, _ = item.partition("=")
    if not equals or urllib.parse.unquote_plus(name).lower() in _PLAIN_PARAMETERS:
        return item
    return f"{name}={REDACTED}"


def _redact_match(match: re.Match[str]) -> str:
    url = match.group(0)
    cut = len(url.rstrip(".,;:)]"))  # the sentence's punctuation, not the URL's
    return redact_url(url[:cut]) + url[cut:]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` (an error message, a log line) with every URL in it redacted and each of ``secrets``
    (as written and percent-decoded) replaced by ``***``."""
    text = _URL.sub(_redact_match, text)
    for secret in sorted({s for value in secrets if value for s in (value, urllib.parse.unquote(value))}, key=len)[
        ::-1
    ]:
        if len(secret) >= 3:  # a one-letter password would blank the message, not protect it
            text = text.replace(secret, REDACTED)
    return text
