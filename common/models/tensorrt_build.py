"""Building a TensorRT engine from an ONNX model: the network, its optimisation profile, FP16, the timing
cache, and a build that says it is alive (minutes on a Jetson)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path
from typing import Any

from common.errors import ModelError
from common.models import engine_cache
from common.models.backend import ModelFile
from common.models.engine_cache import TIMING_CACHE_BYTES, pack, read_regular, unpack, write_whole

__all__ = ["BUILD_HEARTBEAT_S", "build_plan", "is_dynamic", "profile_shapes", "version_of"]

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30


BUILD_HEARTBEAT_S = 30.0  # a build takes minutes on a Jetson: say it is still going this often


def profile_shapes(
    input_shape: tuple[int | str, ...], max_batch: int, size: tuple[int, int] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of the optimisation profile for a parsed network's image input.

    A static batch stays as it is; a dynamic one (-1 or a name) spans 1..max_batch with the
    optimum at max_batch. A dynamic height/width takes ``size`` (width, height) from the manifest.
    """
    if len(input_shape) != 4:
        raise ModelError(f"expected an image input [batch, 3, height, width], got {list(input_shape)}")
    batch, channels, height, width = input_shape
    if not isinstance(channels, int) or channels <= 0:
        raise ModelError(f"the input's channel dimension must be fixed, got {list(input_shape)}")

    def fixed(value: int | str, fallback: int | None, what: str) -> int:
        if isinstance(value, int) and value > 0:
            return value
        if fallback is None:
            raise ModelError(f"the input's {what} is dynamic ({value}); set input_size in the manifest")
        return fallback

    h = fixed(height, size[1] if size else None, "height")
    w = fixed(width, size[0] if size else None, "width")
    if isinstance(batch, int) and batch > 0:
        shape = (batch, channels, h, w)
        return shape, shape, shape
    return (1, channels, h, w), (max_batch, channels, h, w), (max_batch, channels, h, w)


def is_dynamic(shape: tuple[int | str, ...]) -> bool:
    """TensorRT needs an optimisation profile for an input with any open dimension, batch or not."""
    return any(not isinstance(d, int) or d < 0 for d in shape)


def version_of(text: str) -> tuple[int, int]:
    major, minor = [*text.split("."), "0"][:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


class _BuildProgress:
    """Says a build is alive: TensorRT's top-level phases as they start (TensorRT >= 10 reports them),
    and every ``BUILD_HEARTBEAT_S`` the time so far, whatever TensorRT reports."""

    def __init__(self, trt: Any, model: str) -> None:
        self.model = model
        self.phase = "starting"
        self.started = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"trt-build-{model}", daemon=True)
        self.monitor = self._monitor(trt) if hasattr(trt, "IProgressMonitor") else None

    def _monitor(self, trt: Any) -> Any:
        progress = self

        class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
                if parent_phase is None:  # the nested phases are too many to log
                    progress.phase = phase_name
                    log.info(
                        "building TensorRT engine",
                        extra={
                            "model": progress.model,
                            "phase": phase_name,
                            "steps": num_steps,
                            "elapsed_s": round(time.monotonic() - progress.started),
                        },
                    )

            def step_complete(self, phase_name: str, step: int) -> bool:
                return not engine_cache.STOPPING.is_set()  # False cancels the build: the process is stopping

            def phase_finish(self, phase_name: str) -> None:
                pass

        return Monitor()

    def __enter__(self) -> _BuildProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(BUILD_HEARTBEAT_S):
            log.info(
                "still building TensorRT engine",
                extra={"model": self.model, "phase": self.phase, "elapsed_s": round(time.monotonic() - self.started)},
            )


def build_plan(
    trt: Any, logger: Any, spec: ModelFile, model: bytes, max_batch: int, fp16: bool, timing_path: Path
) -> bytes:
    """The serialized engine of ``model``, ``spec``'s ONNX bytes as read once for the cache key too
    (blocking: minutes on a Jetson), starting from and adding to the timing cache at ``timing_path``.
    Raises ModelError when TensorRT refuses the model."""
    builder = trt.Builder(logger)
    if version_of(trt.__version__) < (10, 0):  # TensorRT 8.6: an ONNX network must be made explicit-batch
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    else:
        network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{spec.path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = None
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        if is_dynamic(shape):  # any open dimension, batch or not, at any max_batch
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, *profile_shapes(shape, max_batch, spec.input_size))
    if profile is not None:
        config.add_optimization_profile(profile)
    timing = _known_timing(timing_path, spec.seal)
    timing_cache = config.create_timing_cache(timing or b"")
    if timing_cache is None:  # one TensorRT refuses: start from an empty one
        timing_cache = config.create_timing_cache(b"")
    config.set_timing_cache(timing_cache, False)
    progress = _BuildProgress(trt, spec.name)
    if progress.monitor is not None:
        config.progress_monitor = progress.monitor
    with progress:
        serialized = builder.build_serialized_network(network, config)
    if serialized is None and engine_cache.STOPPING.is_set():  # a stop's grace period is shorter than a build
        log.warning("TensorRT build cancelled: the process is stopping; it starts over at the next start")
        raise ModelError(f"{spec.path}: the TensorRT build was cancelled at a stop")
    if serialized is None:
        raise ModelError(f"{spec.path}: TensorRT failed to build an engine (see its log above)")
    with contextlib.suppress(OSError):  # only a faster next build is lost
        write_whole(timing_path, pack(bytes(config.get_timing_cache().serialize()), spec.seal, timing_path.name))
    return bytes(serialized)


def _known_timing(path: Path, seal: bytes | None) -> bytes | None:
    """What earlier builds on this GPU measured, if it is there and checks out (else a build measures anew)."""
    try:
        return unpack(read_regular(path, TIMING_CACHE_BYTES), seal, path.name)
    except OSError:
        return None
