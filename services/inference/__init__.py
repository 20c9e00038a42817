"""Inference: FrameRefs in, frames read zero-copy from shared memory, Detections out."""
