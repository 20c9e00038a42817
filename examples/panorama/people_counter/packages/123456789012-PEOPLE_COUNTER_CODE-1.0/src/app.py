"""A people counter written for AWS Panorama, as its applications are: nothing here knows EdgeSight.

It reads its threshold from a parameter node, runs YOLOX-Nano through the model node, decodes the raw
output itself, draws boxes and a count on the HDMI output and logs to /opt/aws/panorama/logs.
"""

import logging
from logging.handlers import RotatingFileHandler

import cv2
import numpy as np
import panoramasdk

MODEL_SIZE = 416
PERSON = 0

log = logging.getLogger("people_counter")
log.setLevel(logging.INFO)
handler = RotatingFileHandler("/opt/aws/panorama/logs/app.log", maxBytes=10_000_000, backupCount=2)
handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
log.addHandler(handler)


def preprocess(image):
    """Letterboxed top-left onto 416x416, BGR, 0..255: what YOLOX-Nano expects."""
    scale = min(MODEL_SIZE / image.shape[0], MODEL_SIZE / image.shape[1])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    canvas = np.full((MODEL_SIZE, MODEL_SIZE, 3), 114, np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), scale


def people(output, scale, threshold):
    """Boxes (x1, y1, x2, y2 in image pixels) of the persons in YOLOX's raw [1, N, 85] output."""
    grids, strides = [], []
    for stride in (8, 16, 32):
        side = MODEL_SIZE // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((side * side, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    raw = output[0]
    centres = (raw[:, :2] + grid) * stride
    sizes = np.exp(raw[:, 2:4]) * stride
    scores = raw[:, 4] * raw[:, 5 + PERSON]
    keep = scores >= threshold
    boxes = np.concatenate((centres - sizes / 2, centres + sizes / 2), 1)[keep] / scale
    rects = [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]
    picked = cv2.dnn.NMSBoxes(rects, scores[keep].tolist(), threshold, 0.45)
    return boxes[np.asarray(picked, int).reshape(-1)]


class Application(panoramasdk.node):
    def __init__(self):
        self.threshold = self.inputs.threshold.get()
        self.frames = 0
        log.info("people counter started, threshold %.2f", self.threshold)

    def process_streams(self):
        streams = self.inputs.video_in.get()
        for stream in streams:
            if stream.is_cached:
                continue
            tensor, scale = preprocess(stream.image)
            (output,) = self.call({"images": tensor}, "model_node")
            found = people(output, scale, self.threshold)
            height, width = stream.image.shape[:2]
            for x1, y1, x2, y2 in found:
                stream.add_rect(
                    max(0.0, x1 / width), max(0.0, y1 / height), min(1.0, x2 / width), min(1.0, y2 / height)
                )
            stream.add_label(f"people: {len(found)}", 0.02, 0.06)
            self.frames += 1
            if self.frames % 10 == 1:
                log.info("%s: %d people", stream.stream_id, len(found))
        self.outputs.video_out.put(streams)


def main():
    try:
        app = Application()
        while True:
            app.process_streams()
    except Exception:
        log.exception("exception in the processing loop")
        raise


main()
