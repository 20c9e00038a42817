"""The one table ``python -m benchmarks`` ends with: per benchmark the figure that says whether it did its
job — mostly ``ratio``, ours over a baseline measured in the same run — against the goal written beside
its figures in the docs (README's *Benchmarks*); none where no goal is written.

    >>> print(table({"uplink_throughput": {"ratio": 0.81}}))
    benchmark          ratio  goal    met  what the ratio compares
    uplink_throughput   0.81  >= 0.5  yes  uplink / bare aiomqtt loop, events/s
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["GOALS", "Figure", "Goal", "as_text", "table"]

# A number, or not a figure but a status beside them (inference_throughput's ``tensorrt``: measured or why not).
Figure = float | Mapping[str, Any]
Figures = Mapping[str, Figure]


def as_text(value: Figure, number: str = ",.3f") -> str:
    """A figure as the tables print it: a number in ``number``'s format, a status as plain ``key: value`` text.

    >>> as_text(1234.5), as_text({"measured": False, "reason": "no GPU"})
    ('1,234.500', 'measured: false, reason: no GPU')
    """
    if isinstance(value, (int, float)):
        return format(value, number)
    return ", ".join(f"{key}: {item if isinstance(item, str) else json.dumps(item)}" for key, item in value.items())


@dataclass(frozen=True)
class Goal:
    benchmark: str
    compares: str
    figure: str | Callable[[Figures], float] = "ratio"
    at_least: float | None = None
    at_most: float | None = None  # neither: README sets no goal for it

    def value(self, figures: Figures) -> Figure | None:
        try:
            return figures[self.figure] if isinstance(self.figure, str) else self.figure(figures)
        except (KeyError, ValueError):
            return None

    def goal(self) -> str:
        if self.at_least is not None:
            return f">= {self.at_least:g}"
        return f"<= {self.at_most:g}" if self.at_most is not None else "-"

    def met(self, value: float) -> str:
        if self.at_least is None and self.at_most is None:
            return "-"
        if math.isnan(value):  # a failed run, or a baseline of 0
            return "no"
        if self.at_least is not None:
            return "yes" if value >= self.at_least else "no"
        if self.at_most is not None:
            return "yes" if value <= self.at_most else "no"
        return "-"


def _worst_growth(figures: Figures) -> float:
    return max(
        value
        for name, value in figures.items()
        if name.endswith("_growth_mb_per_h") and isinstance(value, (int, float))
    )


GOALS = (
    Goal("pipeline", "split services (defaults) / one loop, frames/s, 2 streams", at_least=1.3),
    Goal("frame_hop", "shared memory / frame bytes through ZeroMQ, frames/s", at_least=3),
    Goal(
        "ingest_decode",
        "ingest (one process) / bare PyAV on threads of one process, frames/s, worse of 2 and 4 streams",
        at_least=0.9,
    ),
    Goal(
        "inference_throughput",
        "inference service / bare session.run on the same engines, frames/s, batch 1",
        at_least=0.85,
    ),
    Goal("uplink_throughput", "uplink / bare aiomqtt loop, events/s", at_least=0.5),
    Goal("tracking", "cars counted at 5 fps / true crossings (synthetic highway)", "highway_ours_5fps_count_share"),
    Goal("model_package", "load time of the plain .onnx / of a signed package"),
    Goal("app_channel", "1080p frames/s to a sandboxed app over its channel / read from shm by the app", at_least=0.1),
    Goal("analytics", "rules CPU per frame, counts over time on / off, 4 cameras", at_most=1.05),
    Goal("rules_cpu", "rules CPU per frame at 50 objects / matrix Kalman and a Scene a frame", at_most=0.5),
    Goal("fleet", "s until a model is live on 3 sites, --canary 0, healthy_s 3 (not a ratio)", "real_canary0_deploy_s"),
    Goal("soak", "RSS growth, MB/h, worst service (not a ratio)", _worst_growth, at_most=5),
)


def table(results: Mapping[str, Figures], failed: Collection[str] = ()) -> str:
    """One row per benchmark that ran (or failed), in ``GOALS``' order."""
    rows = [("benchmark", "ratio", "goal", "met", "what the ratio compares")]
    for goal in GOALS:
        if goal.benchmark in failed:
            rows.append((goal.benchmark, "failed", goal.goal(), goal.met(math.nan), goal.compares))
        elif goal.benchmark in results:
            value = goal.value(results[goal.benchmark])
            shown = "-" if value is None else as_text(value, ".2f")
            met = goal.met(value) if isinstance(value, (int, float)) else "-"  # a status meets no goal
            rows.append((goal.benchmark, shown, goal.goal(), met, goal.compares))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        f"{name:<{widths[0]}}  {ratio:>{widths[1]}}  {goal:<{widths[2]}}  {met:<{widths[3]}}  {what}".rstrip()
        for name, ratio, goal, met, what in rows
    )
