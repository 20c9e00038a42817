"""A translated app added to a site file (``--base``): everything already in it kept."""

from __future__ import annotations

from typing import Any

from common.urls import redact_url
from services.apps.panorama.translation import NotTranslatable, Translation

__all__ = ["site_document"]


def site_document(translation: Translation, base: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` (everything in it kept) with the app's cameras and ``apps.<app>`` added or replaced.

    ``--camera NODE=@name`` takes the base's camera ``name``; a camera node whose name the base already
    has with another URL is refused (most projects call theirs ``camera_node``: a second app must not
    move the first one's camera)."""
    document = dict(base or {"site": {"name": translation.app}})
    cameras = dict(document.get("cameras") or {})
    problems = []
    for name, url in translation.cameras.items():
        existing = cameras.get(name) or {}
        if url.startswith("@"):
            if url[1:] not in cameras:
                problems.append(
                    f"--camera {name}={url}: the base site file has no camera {url[1:]!r} ({sorted(cameras)})"
                )
            translation.section["cameras"] = [url[1:] if c == name else c for c in translation.section["cameras"]]
        elif existing.get("url", url) != url:
            problems.append(
                f"--camera {name}=...: the base site file has a camera {name!r} with another URL "
                f"({redact_url(str(existing['url']))}); give --camera {name}=@{name} to share it, or "
                f"--camera {name}=@OTHER for another camera of the site"
            )
        else:
            cameras[name] = {**existing, "url": url}
    if problems:
        raise NotTranslatable(problems)
    document["cameras"] = cameras
    apps = dict(document.get("apps") or {})
    apps[translation.app] = translation.section
    document["apps"] = apps
    return document
