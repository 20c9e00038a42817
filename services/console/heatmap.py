"""A camera's heatmap as a picture: the grid of anchor points rules keeps (common/analytics) coloured and
blended over the camera's newest frame (privacy masks applied, as in the live view), or over a dark
background when the console has no frame of it.

The colour follows the logarithm of the count, so that a path walked a few times still shows beside a
queue that stood all day; where nothing went the frame is left as it is (the colour's opacity grows with
the count), so the picture says where, the scale beside it says how much.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["BACKGROUND", "MAX_WIDTH", "render_heatmap"]

MAX_WIDTH = 1280  # as the live view: a console, not a recorder
BACKGROUND = (25, 20, 15)  # BGR: the console's dark blue-grey, where there is no frame
DEFAULT_SIZE = (720, 1280)  # height, width of the background without a frame (16:9, as the grid)
MAX_OPACITY = 0.75  # the hottest cell still lets the scene show through
SPREAD_CELLS = 0.7  # the blur across cells (a Gaussian's sigma, in cells)
COLOUR_LOW, COLOUR_HIGH = 40, 230  # of turbo's 0..255; app.css's .heat-scale shows the same stretch


def render_heatmap(grid: npt.NDArray[np.floating], frame: npt.NDArray[np.uint8] | None) -> npt.NDArray[np.uint8]:
    """``grid`` (rows x columns of counts) over ``frame`` (BGR) as a BGR picture at most MAX_WIDTH wide.

    >>> grid = np.zeros((36, 64)); grid[30:34, 4:10] = 50.0
    >>> picture = render_heatmap(grid, None)
    >>> walked, empty = picture[640, 140].astype(int), picture[40, 1200].astype(int)  # how far from grey:
    >>> picture.shape, bool(walked.max() - walked.min() > 100), bool(empty.max() - empty.min() < 15)
    ((720, 1280, 3), True, True)
    """
    image = _background(frame)
    height, width = image.shape[:2]
    counts = np.nan_to_num(np.asarray(grid, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    peak = float(counts.max()) if counts.size else 0.0
    if peak <= 0:
        return image
    # cells are blurred into each other (a little across cells, then as they are scaled up): a heat, not
    # a chessboard of where the anchors happened to fall
    spread = cv2.GaussianBlur(np.log1p(counts), (0, 0), SPREAD_CELLS)
    level = spread / max(float(spread.max()), 1e-9)  # 0..1
    smooth = cv2.resize(level, (width, height), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)
    # turbo without its darkest ends (a deep red and a violet would vanish on a dark frame)
    colours = cv2.applyColorMap((COLOUR_LOW + smooth * (COLOUR_HIGH - COLOUR_LOW)).astype(np.uint8), cv2.COLORMAP_TURBO)
    opacity = (MAX_OPACITY * np.sqrt(smooth))[..., None]  # faint paths visible, untouched where nothing went
    blended = image.astype(np.float32) * (1.0 - opacity) + colours.astype(np.float32) * opacity
    picture: npt.NDArray[np.uint8] = blended.round().clip(0, 255).astype(np.uint8)
    return picture


def _background(frame: npt.NDArray[np.uint8] | None) -> npt.NDArray[np.uint8]:
    if frame is None:
        image = np.empty((*DEFAULT_SIZE, 3), np.uint8)
        image[:] = BACKGROUND
        return image
    if frame.shape[1] > MAX_WIDTH:
        size = (MAX_WIDTH, round(frame.shape[0] * MAX_WIDTH / frame.shape[1]))
        return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)  # type: ignore[return-value]
    return np.ascontiguousarray(frame)
