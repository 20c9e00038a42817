"""``edgesight panorama import``: an AWS Panorama application project -> an EdgeSight site file.

Reads ``graphs/<app>/graph.json`` (nodes, edges, packages, ``networkRoutingRules``), an optional
deployment override (``nodeGraphOverrides``: a camera node replaced by one or more cameras, a
parameter node by another parameter node, its own ``networkRoutingRules``) and each package's
``package.json`` (the code node's ``network.inboundPorts``) and ``descriptor.json``; or, for a
Lambda-style (v0) app without ``graphs/``, the ``interface()`` of its ``panoramasdk.base`` class, read
with ``ast`` (never run). Its Dockerfile's ``pip install`` lines and its ``requirements.txt`` become
``requirements``. Writes the cameras and an ``apps.<app>`` section that the apps service runs, then
builds the app's own environment where it has requirements:

    edgesight panorama import APP_DIR --camera camera_node=rtsp://... --model model_node=model.onnx \\
        [--param detection_threshold=0.5] [--graph graphs/x/graph.json] [--override overrides.json] \\
        [--base site.yaml] [--no-env] --out site.yaml
    edgesight panorama env --config site.yaml [APP ...]

Whatever cannot be translated is reported, every problem at once, and nothing is written (exit 2).

The pieces: ``project.py`` (which kind of project), ``graph.py`` (a v1 application graph), ``v0.py``
(a v0 app's ``interface()``), ``translation.py`` (what both become), ``site_file.py`` (added to a
base site file), ``cli.py`` (the command line); the requirements are read by
``services/apps/requirements.py`` and built by ``services/apps/environment_build.py``.
"""

from services.apps.panorama.cli import build_parser, main
from services.apps.panorama.project import translate
from services.apps.panorama.site_file import site_document
from services.apps.panorama.translation import NotTranslatable, Translation

__all__ = ["NotTranslatable", "Translation", "build_parser", "main", "site_document", "translate"]
