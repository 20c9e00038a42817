"""Pre- and post-processing, vectorised: letterbox into a reused batch tensor, decode, NMS, unletterbox."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import numpy.typing as npt

from common.models.manifest import YOLOX_STRIDES, ModelManifest
from common.shm import ChannelOrder

__all__ = ["Letterbox", "Placement", "decode_outputs", "nms_per_class"]

FloatArray = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a source frame sits in the model's input: ``input = source * scale + (pad_x, pad_y)``."""

    scale: float
    pad_x: float
    pad_y: float
    width: int  # the source frame's
    height: int


class Letterbox:
    """Resizes frames into the model's input, keeping the aspect ratio, into a batch tensor that is
    allocated once per batch size (``[B, 3, H, W]`` float32)."""

    def __init__(self, manifest: ModelManifest, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.center = manifest.letterbox == "center"
        self.color = manifest.color  # the model's channel order; each frame says its own
        self.pad = manifest.pad_value
        scale = np.float32(manifest.scale)
        std = np.asarray(manifest.std, np.float32)
        # x * scale - mean, divided by std, folded into one multiply and one add per pixel
        self._multiplier = (scale / std).reshape(3, 1, 1).astype(np.float32)
        self._offset = (-np.asarray(manifest.mean, np.float32) / std).reshape(3, 1, 1).astype(np.float32)
        self._plain = not np.any(self._offset) and np.all(self._multiplier == self._multiplier[0])
        self._batches: dict[int, FloatArray] = {}
        self._canvas = np.empty((height, width, 3), np.uint8)

    def batch(self, size: int) -> FloatArray:
        tensor = self._batches.get(size)
        if tensor is None:
            tensor = self._batches[size] = np.empty((size, 3, self.height, self.width), np.float32)
        return tensor

    def place(self, frame: npt.NDArray[np.uint8], out: FloatArray, order: ChannelOrder = "bgr") -> Placement:
        """Letterboxes one HxWx3 frame, whose channels are in ``order``, into ``out`` ([3, H, W]) in the
        model's order: swapped here, on the small canvas, rather than on the whole frame."""
        height, width = frame.shape[:2]
        scale = min(self.width / width, self.height / height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        x0 = (self.width - new_w) // 2 if self.center else 0
        y0 = (self.height - new_h) // 2 if self.center else 0
        canvas = self._canvas
        region = canvas[y0 : y0 + new_h, x0 : x0 + new_w]
        if region.flags.c_contiguous:  # a full-width band: resized straight into it, only the rest padded
            cv2.resize(frame, (new_w, new_h), dst=region, interpolation=cv2.INTER_LINEAR)
            canvas[:y0] = self.pad
            canvas[y0 + new_h :] = self.pad
        else:
            canvas.fill(self.pad)
            region[...] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        channels = canvas[..., ::-1] if order != self.color else canvas
        chw = channels.transpose(2, 0, 1)
        if self._plain and self._multiplier[0, 0, 0] == 1:
            np.copyto(out, chw, casting="unsafe")  # pixels as they are (YOLOX): a cast, no multiply
        elif self._plain:
            np.multiply(chw, self._multiplier[0, 0, 0], out=out, casting="unsafe")
        else:
            np.multiply(chw, self._multiplier, out=out, casting="unsafe")
            out += self._offset
        return Placement(scale, x0, y0, width, height)


_grids: dict[tuple[int, int], tuple[FloatArray, FloatArray]] = {}


def _yolox_grid(width: int, height: int) -> tuple[FloatArray, FloatArray]:
    """Per-anchor (x, y) grid offsets and strides for a YOLOX input size, computed once."""
    key = (width, height)
    if key not in _grids:
        cells, strides = [], []
        for stride in YOLOX_STRIDES:
            ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
            cells.append(np.stack((xs, ys), -1).reshape(-1, 2))
            strides.append(np.full((cells[-1].shape[0], 1), stride))
        _grids[key] = (np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32))
    return _grids[key]


def decode_outputs(
    manifest: ModelManifest,
    outputs: list[npt.NDArray[np.generic]],
    index: int,
    width: int,
    height: int,
    score_threshold: float = 0.0,
) -> tuple[FloatArray, npt.NDArray[np.int32], FloatArray]:
    """One image's candidates: xyxy boxes in input pixels, class ids, scores (before NMS).

    Candidates under ``score_threshold`` may already be left out where that saves work.
    """
    if manifest.decoder == "yolox":
        raw = outputs[0][index].astype(np.float32, copy=False)
        grid, strides = _yolox_grid(width, height)
        # score = objectness x class score <= objectness: most anchors go before the class product
        candidates = raw[:, 4] >= score_threshold
        raw, grid, strides = raw[candidates], grid[candidates], strides[candidates]
        xy = (raw[:, :2] + grid) * strides
        wh = np.exp(raw[:, 2:4]) * strides
        class_scores = raw[:, 5:] * raw[:, 4:5]
        boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
    elif manifest.decoder == "yolov8":
        raw = outputs[0][index].astype(np.float32, copy=False).T  # [N, 4 + C]
        xy, wh = raw[:, :2], raw[:, 2:4]
        class_scores = raw[:, 4:]
        boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
    else:  # end2end: boxes [N, 4] xyxy in input pixels, scores [N], classes [N]
        boxes = outputs[0][index].reshape(-1, 4).astype(np.float32, copy=False)
        scores = outputs[1][index].reshape(-1).astype(np.float32, copy=False)
        class_ids = outputs[2][index].reshape(-1).astype(np.int32)
        return boxes, class_ids, scores
    class_ids = class_scores.argmax(axis=1).astype(np.int32)
    scores = np.take_along_axis(class_scores, class_ids[:, None], axis=1)[:, 0]
    return boxes, class_ids, scores


def nms_per_class(
    boxes: FloatArray, class_ids: npt.NDArray[np.int32], scores: FloatArray, iou: float
) -> npt.NDArray[np.intp]:
    """Indices kept by non-maximum suppression within each class (OpenCV's batched NMS)."""
    if len(scores) == 0:
        return np.empty(0, np.intp)
    xywh = np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), axis=1)
    kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), class_ids.tolist(), 0.0, iou)
    return np.asarray(kept, np.intp).reshape(-1)


def to_source(boxes: FloatArray, placement: Placement) -> FloatArray:
    """Input-pixel xyxy boxes -> 0..1 of the source frame, clipped."""
    out = np.empty_like(boxes)
    out[:, [0, 2]] = (boxes[:, [0, 2]] - placement.pad_x) / (placement.scale * placement.width)
    out[:, [1, 3]] = (boxes[:, [1, 3]] - placement.pad_y) / (placement.scale * placement.height)
    return np.clip(out, 0.0, 1.0, out=out)
