"""What the rules service feeds its series (``common.analytics``) besides line crossings, once a frame:
each zone's occupancy per label, the dwell times of objects that left a dwell rule's zone, each crowd
rule's count, and where each confirmed track's feet were (the heatmap). The writer sums them in memory;
:meth:`SeriesRecorder.run` writes them every FLUSH_INTERVAL_S, and the service once more as it stops.

And the crossings' Prometheus counters, which continue from the stored totals after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

from common.analytics import SeriesWriter
from services.rules import metrics
from services.rules.counts import CountStore
from services.rules.engine import CameraRules
from services.rules.kinds import CrowdState, DwellState
from services.rules.labels import KnownLabels
from services.rules.moment import Moment

__all__ = ["FLUSH_INTERVAL_S", "SeriesRecorder", "continue_counters"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 10.0  # longer writes less often; a crash loses the occupancy and heat of this long


class SeriesRecorder:
    """Feeds one rules service's frames to its ``SeriesWriter`` (none: series off, it does nothing)."""

    def __init__(self, writer: SeriesWriter | None) -> None:
        self.writer = writer
        # (camera, zone) -> labels seen (bounded: services.rules.labels): then 0 counts too
        self.zone_labels: dict[tuple[str, str], KnownLabels] = {}

    def frame(
        self, camera: str, rules: CameraRules, moment: Moment, zones: dict[str, dict[str, int]], wall_ns: int
    ) -> None:
        """One frame of ``camera`` captured at ``wall_ns``, after its rules stepped; ``zones`` is their
        occupancy (zone -> label -> objects inside, in at most MAX_MAP_ENTRIES labels)."""
        writer = self.writer
        if writer is None:
            return
        for zone, occupancy in zones.items():
            labels = self.zone_labels.setdefault((camera, zone), KnownLabels())
            labels.update(occupancy)
            for label in labels:
                writer.occupancy(camera, zone, label, occupancy.get(label, 0), wall_ns)
        for rule in rules.rules:
            if isinstance(rule, DwellState):
                for label, seconds in rule.take_departures():
                    writer.dwell(camera, rule.name, label, seconds, wall_ns)
            elif isinstance(rule, CrowdState):
                count = rule.take_count()
                if count is not None:
                    writer.crowd(camera, rule.name, count, wall_ns)
        # bottom centre: where it stands
        writer.heat_many(camera, [(t.label, (t.box[0] + t.box[2]) / 2, t.box[3]) for t in moment.tracks], wall_ns)

    def flush(self, wall_ns: int | None = None) -> None:
        """Writes what is pending (``SeriesWriter.flush``) as of ``wall_ns`` (now by default); raises
        ``sqlite3.Error`` when it cannot, keeping it pending."""
        if self.writer is not None:
            self.writer.flush(time.time_ns() if wall_ns is None else wall_ns)

    async def run(self) -> None:
        """Flushes every FLUSH_INTERVAL_S of the event loop's clock, which is monotonic: a wall clock that
        jumps changes the buckets written to, not how often."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.try_flush()

    def try_flush(self) -> None:
        """A flush that logs a failure rather than raising it (a full disk must not stop the rules)."""
        try:
            self.flush()
        except sqlite3.Error as exc:
            metrics.SERIES_FLUSH_FAILED.inc()
            log.error("series not written; kept for the next flush", extra={"error": str(exc)})


def continue_counters(store: CountStore) -> None:
    """``edgesight_line_crossings_total`` from the stored totals: a restart continues the counters rather
    than starting them at 0 (Prometheus' ``increase`` sees no reset, only what was counted since)."""
    for (camera, rule), labels in store.counts.items():
        for label, keys in labels.items():
            for direction, value in keys.items():
                if value:
                    metrics.LINE_CROSSINGS.labels(camera, rule, direction, label).inc(value)
