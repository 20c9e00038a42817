"""The console's read-only view of the series rules keeps (``rules.sqlite``, through
common.analytics.SeriesReader): a series over whole buckets with its labels added up where they add up, a
dwell rule's histogram, a camera's heatmap grid.

Blocking (SQLite): handlers call it from worker threads; the reader opens a read-only connection per
call, so threads share nothing. A missing file is no error: rules has kept nothing yet (or keeps it where
``console.analytics_db`` should point).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from common.analytics import DWELL_BOUNDS_S, SeriesKey, SeriesReader
from common.analytics.schema import HEAT_TABLES
from services.console.analytics_query import ADDITIVE, Range

__all__ = ["COUNT_METRICS", "Analytics"]

COUNT_METRICS = frozenset({"in", "out", "dwell_count"})  # whole numbers; the others are means, peaks, seconds

Value = float | int | None


class Analytics:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.reader = SeriesReader(path)

    @property
    def available(self) -> bool:
        """Whether rules has made its file yet."""
        return self.path.is_file()

    def catalog(self) -> list[SeriesKey]:
        """Every series kept: (camera, rule, kind, label, metrics)."""
        return self.reader.catalog()

    def labels(self, camera: str, rule: str) -> list[str]:
        """The labels the rule has series of, sorted (a crowd rule's one is common.analytics.CROWD_LABEL)."""
        return sorted({key.label for key in self.catalog() if key.camera == camera and key.rule == rule})

    def series(self, camera: str, rule: str, labels: list[str], metric: str, span: Range) -> list[Value]:
        """One value per bucket of ``span``: the labels' sum for an additive metric (0 where nothing was
        counted), else the one label's value (None where there is no row: unknown, not zero)."""
        by_start: dict[int, float] = {}
        for label in labels:
            for point in self.reader.series(camera, rule, label, metric, span.start_ns, span.end_ns, span.bucket_s):
                start_s = point.start_ns // 10**9
                by_start[start_s] = by_start.get(start_s, 0.0) + point.value
        values: list[Value] = []
        for start_s in span.starts:
            value = by_start.get(start_s)
            if value is None:
                values.append(0 if metric in ADDITIVE else None)
            elif metric in COUNT_METRICS:
                values.append(round(value))
            else:
                values.append(round(value, 3))
        return values

    def dwell(self, camera: str, rule: str, labels: list[str], span: Range) -> list[int]:
        """Dwells per bin of DWELL_BOUNDS_S, the labels' histograms added up bin by bin."""
        counts = [0] * len(DWELL_BOUNDS_S)
        for label in labels:
            for index, (_, count) in enumerate(
                self.reader.dwell_histogram(camera, rule, label, span.start_ns, span.end_ns)
            ):
                counts[index] += int(count)
        return counts

    def heat_labels(self, camera: str) -> set[str]:
        """The labels the camera's heatmaps hold (hourly and daily); none before rules kept any."""
        if not self.available:
            return set()
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        labels: set[str] = set()
        with closing(sqlite3.connect(uri, uri=True)) as db:
            for table in HEAT_TABLES:
                try:
                    rows = db.execute(f"SELECT DISTINCT label FROM {table} WHERE camera = ?", (camera,)).fetchall()
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):
                        continue
                    raise
                labels.update(label for (label,) in rows)
        return labels

    def heatmap(self, camera: str, label: str | None, span: Range) -> npt.NDArray[np.float64]:
        """Anchor points per cell, of one label or all of them; zeros before rules kept any."""
        return self.reader.heatmap(camera, label, span.start_ns, span.end_ns)
