"""Label tables a manifest may name instead of listing labels (``labels: coco80``), and a manifest's
labels resolved to the table a model's class ids index."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from common.errors import ModelError
from common.models.manifest import ModelManifest, metadata_labels
from contracts.messages import LABEL_PATTERN

__all__ = ["COCO80", "TABLES", "resolve_labels"]

# COCO's 80 detection classes in the order YOLOX, YOLOv5/8/11 and most COCO detectors use.
COCO80 = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]

TABLES = {"coco80": COCO80}


def resolve_labels(
    manifest: ModelManifest,
    base: Path,
    metadata: dict[str, str],
    classes: int | None,
    members: Mapping[str, bytes] | None = None,
) -> list[str]:
    """The label table a model's class ids index: the manifest's list, a named table, a labels file (a
    package's member, or a file beside the manifest) or the model's own metadata; as many as the model
    has ``classes`` (when known), each a label the bus contracts accept."""
    labels = manifest.labels
    if isinstance(labels, list):
        table = labels
    elif isinstance(labels, str) and labels in TABLES:
        table = list(TABLES[labels])
    elif isinstance(labels, str) and members is not None:
        if labels not in members:
            raise ModelError(f"{base}: labels file {labels!r} is not in the package")
        table = [line.strip() for line in members[labels].decode().splitlines() if line.strip()]
    elif isinstance(labels, str):
        path = Path(labels) if Path(labels).is_absolute() else base / labels
        if not path.is_file():
            raise ModelError(f"labels file {path} does not exist")
        table = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        table = metadata_labels(metadata) or [f"class_{i}" for i in range(classes or 0)]
    if classes is not None and len(table) != classes:
        raise ModelError(f"model {manifest.name!r} has {classes} classes but {len(table)} labels")
    bad = [label for label in table if not re.fullmatch(LABEL_PATTERN, label)]  # `$` alone allows a trailing "\n"
    if bad:  # a label travels in Detections and Events, whose contract refuses anything else
        raise ModelError(
            f"model {manifest.name!r}: label {bad[0][:80]!r} is not letters, digits, space, _ . - "
            f"(at most 64, see contracts/README.md); rename it in the labels list"
        )
    return table
