"""How far TensorRT is from ONNX Runtime on the CPU, for ``benchmarks.gpu_check``: raw outputs against FP16's
tolerance, and the persons detected matched by IoU."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.gpu_report import StepFailed
from services.inference.detector import FrameDetections
from services.rules.tracker import iou_matrix

FP16_RTOL, FP16_ATOL = 0.02, 0.05  # YOLOX's raw outputs: offsets and log-sizes of -3..4, scores of 0..1
FP16_SHARE = 0.999  # of the values within tolerance: FP16 leaves rare outliers; the detections say if they matter
MATCH_IOU = 0.8
CONFIDENT_MARGIN = 0.1  # a person this far above the score threshold is found by both: FP16 cannot move it across
PERSON = 0  # COCO's class 0
Array = npt.NDArray[Any]


def compare(got: list[Array], want: list[Array]) -> dict[str, Any]:
    """How far TensorRT's outputs are from ONNX Runtime's: the largest absolute error, the largest relative
    error where the reference is not near 0, and the share within FP16's tolerance."""
    shapes = [(g.shape, w.shape) for g, w in zip(got, want, strict=True)]
    if any(g != w for g, w in shapes):
        raise StepFailed(
            f"output shapes differ: TensorRT {[g for g, _ in shapes]}, ONNX Runtime {[w for _, w in shapes]}"
        )
    error = np.concatenate([np.abs(g.astype(np.float64) - w).ravel() for g, w in zip(got, want, strict=True)])
    reference = np.concatenate([np.abs(w.astype(np.float64)).ravel() for w in want])
    sizable = reference >= 0.1
    return {
        "max_abs": float(error.max(initial=0.0)),
        "max_rel": float((error[sizable] / reference[sizable]).max(initial=0.0)),
        "within": float(np.mean(error <= FP16_ATOL + FP16_RTOL * reference)),
    }


def same_persons(got: FrameDetections, want: FrameDetections, threshold: float) -> dict[str, Any]:
    """Whether TensorRT found the persons ONNX Runtime found confidently, each by the box that overlaps it most."""
    ours = got.boxes[got.class_ids == PERSON]
    theirs = want.class_ids == PERSON
    confident = want.boxes[theirs & (want.scores >= threshold + CONFIDENT_MARGIN)]
    best = iou_matrix(confident, ours).max(axis=1) if len(ours) else np.zeros(len(confident))
    return {
        "persons": len(ours),
        "reference_persons": int(theirs.sum()),
        "confident": len(confident),
        "matched": int((best >= MATCH_IOU).sum()),
        "min_iou": float(best.min(initial=1.0)),
    }
