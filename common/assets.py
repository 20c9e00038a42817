"""Finding models and media: a search path instead of hard-coded locations.

Order: an absolute path as given; ``site.asset_paths``; ``$EDGESIGHT_ASSETS`` (``:``-separated);
``../shared`` beside a development checkout. In each folder the name is tried as is and under
``models/`` and ``media/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from common.errors import AssetError

__all__ = ["asset_search_path", "find_asset"]

_CHECKOUT = Path(__file__).resolve().parent.parent


def asset_search_path(configured: Iterable[Path | str] = ()) -> list[Path]:
    paths = [Path(p) for p in configured]
    paths += [Path(p) for p in os.environ.get("EDGESIGHT_ASSETS", "").split(":") if p]
    paths.append(_CHECKOUT.parent / "shared")
    return paths


def find_asset(name: str | Path, configured: Iterable[Path | str] = ()) -> Path:
    """The file ``name`` resolves to, or AssetError listing every place looked."""
    candidate = Path(name)
    if candidate.is_absolute():
        if candidate.is_file():
            return candidate
        raise AssetError(f"{candidate} does not exist")
    tried: list[Path] = []
    for folder in asset_search_path(configured):
        for sub in ("", "models", "media"):
            path = folder / sub / candidate
            tried.append(path)
            if path.is_file():
                return path
    raise AssetError(
        f"{name} not found; looked in: {', '.join(map(str, tried))}. "
        "Set site.asset_paths or EDGESIGHT_ASSETS to the folder that holds it."
    )
