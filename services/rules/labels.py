"""Labels are bounded in rules: anyone on the bus can send Detections of any number of made-up labels.

Two bounds:

- **Per model, before tracking** (``LabelGate``): each (camera, model) tracks at most
  ``MAX_LABELS_PER_MODEL`` distinct labels at a time. Detections of a label beyond them are left out before
  the tracker sees them, counted in ``edgesight_rules_detections_dropped_total{reason="labels"}`` (one per
  detection) and warned about once per camera and model. The labels a rule of the camera names in its
  ``classes`` are always tracked (a sender cannot shut ``person`` out), and a label not detected for the
  tracker's ``max_age_s`` (no track of it is left) gives its place up when a new one needs it.
- **Per map** (``bounded``, ``bounded_lines``): every label map rules puts in an Event or a Scene (an event's
  ``counts``, a Scene's ``zones`` and ``lines`` per rule) keeps to ``MAX_MAP_ENTRIES``: the object's own label
  always, the others by count (largest first, then by name), the rest summed into ``other``. A zone holding
  objects of 300 labels (16 models of 256 each are possible) still makes valid events.

What rules keeps across frames is bounded the same way: a zone's occupancy gauges and analytics series keep
at most ``MAX_MAP_ENTRIES`` labels (``KnownLabels``: the longest at 0 go first, their gauge series removed), and
a line's counts (``CountStore.label_for``) at most ``MAX_MAP_ENTRIES - 1`` labels, later ones counted as ``other``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from common.config import CameraConfig
from contracts import Detections
from contracts.messages import MAX_MAP_ENTRIES
from services.rules import counts, metrics

__all__ = [
    "MAX_LABELS_PER_MODEL",
    "MAX_MAP_ENTRIES",
    "OTHER",
    "KnownLabels",
    "LabelGate",
    "bounded",
    "bounded_lines",
    "first_entries",
    "named_labels",
    "occupancy_text",
    "set_zone_gauges",
]

log = logging.getLogger(__name__)

MAX_LABELS_PER_MODEL = 256  # labels tracked at once per (camera, model); more gains nothing a site runs, costs memory
OTHER = counts.OTHER  # where the labels past a bound are summed
MAX_TEXT = 1024  # contracts' Text: a Health detail value


def named_labels(camera: CameraConfig) -> frozenset[str]:
    """The labels the camera's rules name in ``classes``: always tracked."""
    return frozenset(label for rule in camera.rules.values() for label in rule.classes)


class LabelGate:
    """Which detections of one camera are tracked: per model, at most MAX_LABELS_PER_MODEL labels at once.

    ``hold_s`` (the tracker's ``max_age_s``) is how long a label stays after its last detection: longer keeps
    a label that comes back after a gap, shorter lets a new label in sooner when the model's are all taken.
    ``clock`` is monotonic seconds of receipt (a frame's own clock is the sender's to choose)."""

    def __init__(
        self, camera: str, hold_s: float, reserved: Collection[str] = (), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.camera = camera
        self.hold_s = hold_s
        self.reserved = frozenset(reserved)  # a reload replaces it
        self._clock = clock
        self._seen: dict[str, dict[str, float]] = {}  # model -> label -> when last detected
        self._warned: set[str] = set()

    def admit(self, detections: Detections, class_ids: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
        """A mask of the detections to track (None: all of them); those left out are counted."""
        if not len(class_ids):
            return None
        now = self._clock()
        seen = self._seen.setdefault(detections.model, {})
        names = detections.labels
        refused: list[int] = []
        for class_id in np.unique(class_ids).tolist():
            label = names.get(class_id, str(class_id))
            if label in seen or label in self.reserved or self._room(seen, now):
                seen[label] = now
            else:
                refused.append(class_id)
        if not refused:
            return None
        keep = ~np.isin(class_ids, refused)
        self._left_out(detections.model, int(len(keep) - keep.sum()))
        return keep

    def _room(self, seen: dict[str, float], now: float) -> bool:
        """Whether the model may track one more label: one is free, or one not detected for ``hold_s`` goes."""
        unreserved = sum(1 for label in seen if label not in self.reserved)
        if unreserved < MAX_LABELS_PER_MODEL:
            return True
        oldest = min((label for label in seen if label not in self.reserved), key=seen.__getitem__)
        if now - seen[oldest] <= self.hold_s:
            return False
        del seen[oldest]
        return True

    def _left_out(self, model: str, count: int) -> None:
        metrics.DETECTIONS_DROPPED.labels(self.camera, "labels").inc(count)
        if model not in self._warned:
            self._warned.add(model)
            log.warning(
                "a model sends more labels than rules tracks; detections of the others are left out",
                extra={"camera": self.camera, "model": model, "max_labels": MAX_LABELS_PER_MODEL},
            )

    def forget(self, model: str) -> None:
        """A model no longer tracked (its slot given up)."""
        self._seen.pop(model, None)


def bounded(counts: Mapping[str, int], keep: str | None = None, limit: int = MAX_MAP_ENTRIES) -> dict[str, int]:
    """``counts`` in at most ``limit`` entries: ``keep`` (the object's own label), the largest others, and
    ``other`` holding the rest.

    >>> bounded({"person": 1, "cat": 5, "dog": 3, "cow": 2}, keep="person", limit=3)
    {'person': 1, 'cat': 5, 'other': 5}
    >>> bounded({"a": 1}, limit=3)
    {'a': 1}
    """
    if len(counts) <= limit:
        return dict(counts)
    kept = [keep] if keep is not None and keep in counts and keep != OTHER else []
    ranked = sorted((label for label in counts if label != OTHER and label not in kept), key=lambda k: (-counts[k], k))
    kept += ranked[: limit - 1 - len(kept)]
    out = {label: counts[label] for label in kept}
    out[OTHER] = sum(counts.values()) - sum(out.values())
    return out


def bounded_lines(by_label: Mapping[str, Mapping[str, int]], limit: int = MAX_MAP_ENTRIES) -> dict[str, dict[str, int]]:
    """A line's counts (label -> "in"/"out") in at most ``limit`` labels: the most counted, ``other`` the rest
    (a ``rules.sqlite`` written before labels were bounded may hold more)."""
    if len(by_label) <= limit:
        return {label: dict(keys) for label, keys in by_label.items()}
    totals = {label: sum(keys.values()) for label, keys in by_label.items()}
    kept = set(bounded(totals, limit=limit)) - {OTHER}
    out: dict[str, dict[str, int]] = {label: dict(by_label[label]) for label in by_label if label in kept}
    rest = out.setdefault(OTHER, {})
    for label, keys in by_label.items():
        if label not in kept:
            for key, value in keys.items():
                rest[key] = rest.get(key, 0) + value
    return out


def first_entries(mapping: Mapping[str, Any], limit: int = MAX_MAP_ENTRIES) -> dict[str, Any]:
    """The first ``limit`` entries (attributes: the rules' own keys come first, and are a handful)."""
    return {key: mapping[key] for _, key in zip(range(limit), mapping, strict=False)}


def occupancy_text(occupancy: Mapping[str, int]) -> str:
    """A zone's occupancy as a Health detail value: ``label=n`` by label, within contracts' Text."""
    text = ",".join(f"{k}={v}" for k, v in sorted(occupancy.items())) or "empty"
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


class KnownLabels:
    """The labels a zone's series are kept for (a label whose objects left reads 0, not its last value), at
    most MAX_MAP_ENTRIES: past it, the labels longest at 0 are forgotten first."""

    def __init__(self, seed: Iterable[str] = ()) -> None:
        self._labels: dict[str, None] = dict.fromkeys(seed)  # oldest non-zero first

    def update(self, occupancy: Mapping[str, int]) -> list[str]:
        """Takes a (bounded) occupancy; returns the labels forgotten."""
        for label in occupancy:
            self._labels.pop(label, None)
            self._labels[label] = None
        forgotten: list[str] = []
        for label in list(self._labels):
            if len(self._labels) <= MAX_MAP_ENTRIES:
                break
            if label not in occupancy:
                del self._labels[label]
                forgotten.append(label)
        return forgotten

    def __iter__(self) -> Iterator[str]:
        return iter(self._labels)

    def __len__(self) -> int:
        return len(self._labels)


def set_zone_gauges(camera: str, known: dict[str, KnownLabels], zones: Mapping[str, Mapping[str, int]]) -> None:
    """``edgesight_zone_occupancy`` of each zone: every label known there, 0 for those with none inside."""
    for zone, occupancy in zones.items():
        labels = known.setdefault(zone, KnownLabels(("person",)))
        for label in labels.update(occupancy):
            with contextlib.suppress(KeyError):  # never set: nothing to remove
                metrics.ZONE_OCCUPANCY.remove(camera, zone, label)
        for label in labels:
            metrics.ZONE_OCCUPANCY.labels(camera, zone, label).set(occupancy.get(label, 0))
