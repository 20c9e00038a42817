"""What the console knows of each camera right now, and its pictures.

Fed from the bus (FrameRef, Detections, CameraStatus, Scene, Health); pixels are read from shared
memory only when somebody looks, and each picture is encoded once however many people look at it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from common.config import CameraConfig
from common.config.rules import LineRule, ZoneRule
from common.draw import BLACK, Colour, draw_box, draw_label, draw_line, draw_zones, in_pixels
from common.errors import ShmError, StaleFrameError
from common.privacy import apply_privacy_masks
from common.shm import FrameReaders
from contracts import CameraStatus, Detections, FrameRef, Health, Scene

__all__ = ["CameraView", "Live"]

FRESH_NS = 2 * 10**9  # tracks or detections older than this are not drawn on a newer frame
MAX_WIDTH = 1280  # pictures are scaled down to this: a console, not a recorder
JPEG_QUALITY = 80
ZONE_COLOUR: Colour = (60, 180, 255)  # BGR
LINE_COLOUR: Colour = (255, 200, 0)
TRACK_COLOUR: Colour = (80, 220, 80)
LABEL_SCALE = 0.5  # labels: black text on the colour of what they name


@dataclasses.dataclass
class CameraView:
    status: CameraStatus | None = None
    frame: FrameRef | None = None
    detections: Detections | None = None
    scene: Scene | None = None
    labels: set[str] = dataclasses.field(default_factory=set)
    version: int = 0  # +1 per new frame, scene or detections: a live view waits for it to change
    cache: tuple[tuple[Any, ...], bytes] | None = None


class Live:
    def __init__(self, readers: FrameReaders) -> None:
        self.readers = readers
        self.cameras: dict[str, CameraView] = {}
        self.health: dict[tuple[str, str], tuple[Health, float]] = {}  # (service, instance) -> (health, monotonic)
        self._lock = threading.Lock()  # the readers and the caches, used from several HTTP worker threads

    def view(self, camera: str) -> CameraView:
        view = self.cameras.get(camera)
        if view is None:
            view = self.cameras[camera] = CameraView()
        return view

    # -- fed from the bus (on the event loop) --------------------------------------------------
    def on_message(self, message: object) -> str | None:
        """Records a bus message; returns the camera whose picture changed, if any."""
        if isinstance(message, FrameRef):
            view = self.view(message.camera)
            view.frame = message
        elif isinstance(message, Scene):
            view = self.view(message.camera)
            view.scene = message
            view.labels.update(track.label for track in message.tracks)
        elif isinstance(message, Detections):
            view = self.view(message.frame.camera)
            view.detections = message
            view.labels.update(message.labels.values())
        elif isinstance(message, CameraStatus):
            self.view(message.camera).status = message
            return None
        elif isinstance(message, Health):
            self.health[message.service, message.instance] = (message, time.monotonic())
            return None
        else:
            return None
        view.version += 1
        return message.camera if isinstance(message, FrameRef | Scene) else message.frame.camera  # type: ignore[union-attr]

    # -- pictures (on worker threads) -------------------------------------------------------------
    def picture(self, camera: str, config: CameraConfig | None, *, overlay: bool) -> bytes | None:
        """The newest frame as JPEG; with ``overlay`` the newest tracks (else detections) on the frame
        they belong to, and the camera's lines and zones. None when no frame is readable."""
        view = self.cameras.get(camera)
        if view is None or view.frame is None:
            return None
        ref: FrameRef = view.frame
        boxes: list[tuple[tuple[float, float, float, float], str]] = []
        if overlay:
            ref, boxes = self._with_boxes(view)
        key = (ref.seq, ref.monotonic_ns, overlay, id(config), len(boxes))
        with self._lock:
            if view.cache is not None and view.cache[0] == key:
                return view.cache[1]
            pixels = self._read(ref)
            if pixels is None and ref is not view.frame:  # the tracked frame is overwritten: the newest, bare
                ref, boxes = view.frame, []
                pixels = self._read(ref)
            if pixels is None:
                return None
        # masked at full size, before scaling: no pixel of the area is blended into its border
        image = apply_privacy_masks(pixels, config.privacy_masks if config is not None else ())
        if image.shape[1] > MAX_WIDTH:
            scale = MAX_WIDTH / image.shape[1]
            size = (MAX_WIDTH, round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)  # type: ignore[assignment]
        if overlay:
            height, width = image.shape[:2]
            labels = draw_geometry(image, config, view.scene) if config is not None else []
            for box, text in boxes:
                corners = in_pixels(box, width, height)
                draw_box(image, corners, TRACK_COLOUR, thickness=2, label=text, text_colour=BLACK, scale=LABEL_SCALE)
            for text, at, colour in labels:  # last: a line's counts are never hidden under track labels
                draw_label(image, text, at, colour, text_colour=BLACK, scale=LABEL_SCALE)
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return None
        picture = encoded.tobytes()
        with self._lock:
            view.cache = (key, picture)
        return picture

    def _with_boxes(self, view: CameraView) -> tuple[FrameRef, list[tuple[tuple[float, float, float, float], str]]]:
        assert view.frame is not None
        newest = view.frame.monotonic_ns
        scene, detections = view.scene, view.detections
        if scene is not None and newest - scene.frame.monotonic_ns <= FRESH_NS:
            return scene.frame, [
                (track.box, f"#{track.track_id} {track.label} {track.score:.2f}") for track in scene.tracks
            ]
        if detections is not None and newest - detections.frame.monotonic_ns <= FRESH_NS:
            labels = detections.labels
            return detections.frame, [
                ((float(b[0]), float(b[1]), float(b[2]), float(b[3])), f"{labels.get(int(c), str(int(c)))} {s:.2f}")
                for b, c, s in zip(
                    detections.boxes.to_numpy(),
                    detections.class_ids.to_numpy(),
                    detections.scores.to_numpy(),
                    strict=True,
                )
            ]
        return view.frame, []

    def _read(self, ref: FrameRef) -> npt.NDArray[np.uint8] | None:
        """A BGR copy of the frame (JPEGs are encoded from BGR), whatever the camera's pixel_format."""
        try:
            return self.readers.copy(ref, "bgr")
        except (StaleFrameError, ShmError):
            return None  # overwritten already, or the ring is gone (ingest restarting)


def draw_geometry(
    image: npt.NDArray[np.uint8], camera: CameraConfig, scene: Scene | None
) -> list[tuple[str, tuple[float, ...], Colour]]:
    """Zones (filled lightly) and lines with an arrow to their in-side; returns their labels (occupancy,
    counts) as ``(text, at, colour)`` for the caller to draw on top of everything else."""
    labels: list[tuple[str, tuple[float, ...], Colour]] = []
    height, width = image.shape[:2]
    zones = {
        name: [in_pixels(point, width, height) for point in rule.polygon]
        for name, rule in camera.rules.items()
        if isinstance(rule, ZoneRule)
    }
    draw_zones(image, list(zones.values()), ZONE_COLOUR, alpha=0.25, thickness=2)
    for name, rule in camera.rules.items():
        if isinstance(rule, ZoneRule):
            occupancy = (scene.zones.get(name, {}) if scene else {}) or {}
            labels.append((f"{name}: {sum(occupancy.values())}", zones[name][0], ZONE_COLOUR))
        elif isinstance(rule, LineRule):
            a, b = (in_pixels(point, width, height) for point in rule.line)
            draw_line(image, a, b, LINE_COLOUR, thickness=3, in_side=rule.in_side, arrow_length=40, arrow_thickness=2)
            counts = scene.lines.get(name, {}) if scene else {}
            total_in = sum(c.in_ for c in counts.values())
            total_out = sum(c.out for c in counts.values())
            labels.append((f"{name}: in {total_in} / out {total_out}", a, LINE_COLOUR))
    return labels
