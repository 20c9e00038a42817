"""Privacy masks: the one function that hides a camera's masked areas, wherever a frame is made for people
(the console's live view, rules' snapshots, Panorama apps' frames and so their output) and, for masks
with ``inference: true``, in the model's input too.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import numpy.typing as npt

from common.config.cameras import PrivacyMask

__all__ = ["FILL_VALUE", "apply_privacy_masks"]

FILL_VALUE = 0  # black, in every channel: the same in BGR and RGB, so masks need not know the order


def apply_privacy_masks(frame: npt.NDArray[np.uint8], masks: Iterable[PrivacyMask]) -> npt.NDArray[np.uint8]:
    """Fills or blurs every mask's polygon (fractions of the frame) in ``frame``, in place; returns it.

    ``frame`` must be writable: a copy out of the ring, never the ring's own pixels.
    """
    height, width = frame.shape[:2]
    for mask in masks:
        points = np.round(np.asarray(mask.polygon, np.float64) * [width, height]).astype(np.int32)
        if mask.mode == "fill":
            cv2.fillPoly(frame, [points], (FILL_VALUE,) * 3)
        else:
            # Only the polygon's bounding box is blurred (a whole 1080p frame costs ~100 ms at this sigma);
            # the sigma stays relative to the frame, so a mask blurs alike at any size.
            x, y, w, h = cv2.boundingRect(points)
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
            if x1 <= x0 or y1 <= y0:
                continue
            region = frame[y0:y1, x0:x1]
            stencil = np.zeros(region.shape[:2], np.uint8)
            cv2.fillPoly(stencil, [points - [x0, y0]], 255)
            blurred = cv2.GaussianBlur(region, (0, 0), sigmaX=max(width, height) / 50)
            region[stencil > 0] = blurred[stencil > 0]
    return frame
