"""Which kind of Panorama project a folder holds, and its translation: a v1 application (one
``graphs/<app>/graph.json``, or the one ``--graph`` names) or a v0 app (a ``.py`` file with a
``panoramasdk.base`` class).
"""

from __future__ import annotations

from pathlib import Path

from services.apps.panorama.graph import translate_graph
from services.apps.panorama.translation import NotTranslatable, Translation
from services.apps.panorama.v0 import find_v0_app, translate_v0

__all__ = ["translate"]


def translate(
    app_dir: Path,
    *,
    cameras: dict[str, str],
    models: dict[str, str],
    params: dict[str, str],
    graph: Path | None = None,
    override: Path | None = None,
) -> Translation:
    """An application project (or a v0 app's folder or file) -> the cameras and ``apps.<app>`` section;
    NotTranslatable with every problem found where it cannot be translated."""
    if graph is None:
        graphs = sorted(app_dir.glob("graphs/*/graph.json")) if app_dir.is_dir() else []
        problems: list[str] = []
        found = None if graphs else find_v0_app(app_dir, problems)
        if found is not None:
            if override is not None:
                problems.append(f"--override {override}: a v0 app has no graph to override")
            if problems:
                raise NotTranslatable(problems)
            return translate_v0(*found, cameras, models, params)
        if len(graphs) != 1:
            where = ", ".join(str(g) for g in graphs) or "none"
            v0 = "or a v0 app: a .py file with a panoramasdk.base class"
            problems.insert(0, f"{app_dir}: expected one graphs/<app>/graph.json ({v0}), found {where}; use --graph")
            raise NotTranslatable(problems)
        graph = graphs[0]
    elif not graph.is_absolute() and not graph.exists():
        graph = app_dir / graph
    return translate_graph(app_dir, graph, override, cameras, models, params)
