"""Pre- and post-processing, vectorised: letterbox into a reused batch tensor, decode, NMS, unletterbox."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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
    allocated once per batch size (``[B, 3, H, W]`` float32). Of a frame that fills the input's width,
    only its rows are converted: the padding above and below stays in a batch row from the last frame
    of that size. One thread at a time (an engine runs one batch at a time)."""

    def __init__(self, manifest: ModelManifest, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.center = manifest.letterbox == "center"
        self.color = manifest.color  # the model's channel order; each frame says its own
        self.pad = manifest.pad_value
        scale = np.float32(manifest.scale)
        std = np.asarray(manifest.std, np.float32)
        # x * scale - mean, divided by std, folded into one multiply and one add per pixel and channel
        multipliers = (scale / std).astype(np.float32)
        offsets = (-np.asarray(manifest.mean, np.float32) / std).astype(np.float32)
        self._multipliers, self._offsets = tuple(multipliers), tuple(offsets) if np.any(offsets) else None
        self._raw = self._offsets is None and bool(np.all(multipliers == 1))  # pixels as they are (YOLOX)
        self._batches: dict[int, FloatArray] = {}
        self._canvas = np.empty((height, width, 3), np.uint8)
        self._planes = [np.empty((height, width), np.uint8) for _ in range(3)]
        self._pad_values = self._convert([np.full((1, 1), self.pad, np.uint8)] * 3, np.empty((3, 1, 1), np.float32))
        self._padded: dict[int, tuple[int, int]] = {}  # address of a row of our batches -> rows its padding surrounds

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
        if region.flags.c_contiguous:  # a full-width band: resized straight into it, only its rows converted
            cv2.resize(frame, (new_w, new_h), dst=region, interpolation=cv2.INTER_LINEAR)
            rows = slice(y0, y0 + new_h)
            self._convert(cv2.split(region, [plane[rows] for plane in self._planes]), out[:, rows], order)
            self._pad_rows(out, y0, new_h)
        else:
            canvas.fill(self.pad)
            region[...] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            self._convert(cv2.split(canvas, self._planes), out, order)
            self._padded.pop(out.__array_interface__["data"][0], None)
        return Placement(scale, x0, y0, width, height)

    def _convert(self, planes: Sequence[npt.ArrayLike], out: FloatArray, order: ChannelOrder = "bgr") -> FloatArray:
        """uint8 planes (OpenCV's split: each cast on its own is 3x faster than one cast through a
        transpose) into ``out``'s channels, in the model's order, scaled as the model wants."""
        if order != self.color:
            planes = planes[::-1]
        for channel, (plane, target) in enumerate(zip(planes, out, strict=True)):
            if self._raw:
                np.copyto(target, plane, casting="unsafe")  # pixels as they are: a cast, no multiply
                continue
            np.multiply(plane, self._multipliers[channel], out=target, casting="unsafe")
            if self._offsets is not None:
                target += self._offsets[channel]
        return out

    def _pad_rows(self, out: FloatArray, y0: int, new_h: int) -> None:
        """Pads the rows of ``out`` above and below the frame, unless they hold that padding already:
        a camera's frames keep their size, and nothing else writes those rows of our batches."""
        address = out.__array_interface__["data"][0]
        ours = any(out.base is tensor for tensor in self._batches.values())
        if ours and self._padded.get(address) == (y0, new_h):
            return
        out[:, :y0] = self._pad_values
        out[:, y0 + new_h :] = self._pad_values
        if ours:
            self._padded[address] = (y0, new_h)


_anchors: dict[tuple[int, int], FloatArray] = {}


def _yolox_anchors(width: int, height: int) -> FloatArray:
    """Per anchor its grid x, grid y and stride (``[N, 3]``) for a YOLOX input size, computed once."""
    key = (width, height)
    if key not in _anchors:
        tables = []
        for stride in YOLOX_STRIDES:
            ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
            tables.append(np.stack((xs, ys, np.full_like(xs, stride)), -1).reshape(-1, 3))
        _anchors[key] = np.concatenate(tables).astype(np.float32)
    return _anchors[key]


def decode_outputs(
    manifest: ModelManifest,
    outputs: list[npt.NDArray[np.generic]],
    index: int,
    width: int,
    height: int,
    score_threshold: float = 0.0,
) -> tuple[FloatArray, npt.NDArray[np.int32], FloatArray]:
    """One image's candidates: xyxy boxes in input pixels, class ids, scores (before NMS).

    Candidates under ``score_threshold`` may already be left out where that saves work: anchors are
    pruned first, and only the few left are decoded.
    """
    if manifest.decoder == "yolox":
        raw = outputs[0][index].astype(np.float32, copy=False)  # [N, 5 + C]
        # score = objectness x class score <= objectness: most anchors go before anything is computed
        rows = np.flatnonzero(raw[:, 4] >= score_threshold)
        raw = raw[rows]
        anchors = _yolox_anchors(width, height)[rows]
        strides = anchors[:, 2:]
        xy = (raw[:, :2] + anchors[:, :2]) * strides
        wh = np.exp(raw[:, 2:4]) * strides
        class_scores = raw[:, 5:] * raw[:, 4:5]
    elif manifest.decoder == "yolov8":
        raw = outputs[0][index].astype(np.float32, copy=False)  # [4 + C, N]
        best = raw[4:].max(axis=0)  # each anchor's best class score, a reduction over contiguous rows
        raw = raw[:, np.flatnonzero(best >= score_threshold)].T  # [n, 4 + C], the anchors that may pass
        xy, wh = raw[:, :2], raw[:, 2:4]
        class_scores = raw[:, 4:]
    else:  # end2end: boxes [N, 4] xyxy in input pixels, scores [N], classes [N]
        boxes = outputs[0][index].reshape(-1, 4).astype(np.float32, copy=False)
        scores = outputs[1][index].reshape(-1).astype(np.float32, copy=False)
        class_ids = outputs[2][index].reshape(-1).astype(np.int32)
        return boxes, class_ids, scores
    half = wh / 2
    boxes = np.concatenate((xy - half, xy + half), axis=1)
    class_ids = class_scores.argmax(axis=1).astype(np.int32)
    return boxes, class_ids, class_scores.max(axis=1)


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
    offset = np.asarray([placement.pad_x, placement.pad_y] * 2, np.float32)
    size = np.asarray([placement.scale * placement.width, placement.scale * placement.height] * 2, np.float32)
    out = np.subtract(boxes, offset)
    out /= size
    return np.clip(out, 0.0, 1.0, out=out)
