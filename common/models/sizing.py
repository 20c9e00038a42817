"""How many engines and CPU threads a model runs on when the site file says ``auto`` (its default):
chosen from the cores this process may use and the cameras it serves, the same way wherever it runs
(``edgesight run``, compose, k3s), because the inference process chooses for itself.

The rule, for a CPU: one engine per core, up to the cameras the model serves, and the cores shared out
between them. On 2 cores with 2 cameras that is two engines of one thread each: two frames run at once
where one engine would run one frame on both cores, its threads waiting for each other (the README's
pipeline benchmark). With one camera it is one engine on every core, the lowest latency. A GPU runs one
batch at a time, so it gets one engine, and batching across cameras is what feeds it.

"The cores this process may use" is its CPU affinity, capped by a cgroup CPU quota (a container's
``--cpus``, a pod's CPU limit), which ONNX Runtime's own default ignores.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from common.config import ModelConfig

__all__ = ["Sizing", "accelerated", "cpu_threads", "size_model", "usable_cores"]

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CPU_PROVIDER = "CPUExecutionProvider"


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may run on: its affinity, capped by the cgroup v2 quota (rounded up)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError, ZeroDivisionError):
        pass  # no cgroup v2 quota here (or none that reads): the affinity is the limit
    return max(1, cores)


def accelerated(model: ModelConfig) -> bool:
    """Runs on a GPU (TensorRT, or an ONNX Runtime provider before the CPU one)."""
    return model.backend == "tensorrt" or (bool(model.providers) and model.providers[0] != CPU_PROVIDER)


@dataclasses.dataclass(frozen=True)
class Sizing:
    engines: int  # copies of the model running frames at once
    threads: int  # CPU threads per engine (ONNX Runtime's intra-op threads); 0: ONNX Runtime's own choice
    why: str  # what it was chosen from, for the log and `edgesight run`
    crowded: str = ""  # set when the site file's values run more threads than the cores: what to change


def size_model(model: ModelConfig, *, cameras: int, cores: int, processes: int = 1) -> Sizing:
    """Engines and threads for ``model`` serving ``cameras`` in one of ``processes`` inference processes
    on ``cores`` cores; what the site file gives explicitly is kept, and the rest fits around it.

    >>> from common.config import ModelConfig
    >>> size_model(ModelConfig(path="m.onnx"), cameras=2, cores=2)
    Sizing(engines=2, threads=1, why='auto: 2 cores, 2 cameras', crowded='')
    >>> size_model(ModelConfig(path="m.onnx"), cameras=1, cores=4).engines
    1
    >>> size_model(ModelConfig(path="m.onnx", threads=2), cameras=4, cores=4).why  # engines fit the threads
    'threads 2 from the site file; engines auto: 4 cores, 4 cameras'
    >>> size_model(ModelConfig(path="m.onnx", providers=["CUDAExecutionProvider"]), cameras=8, cores=6).engines
    1
    """
    share = max(1, cores // max(1, processes))  # the cores of this process, when several split the box
    set_engines = int(model.engines) if model.engines != "auto" else None
    set_threads = int(model.threads) if model.threads != "auto" else None
    if set_engines is not None:
        engines = set_engines
    elif accelerated(model):
        engines = 1
    else:  # one per core (or per `threads` cores where those are set; 0 is every core), up to the cameras
        per_engine = 1 if set_threads is None else (set_threads or share)
        engines = max(1, min(share // per_engine, cameras))
    threads = set_threads if set_threads is not None else max(1, share // engines)
    basis = f"{cores} core{'s' * (cores != 1)}, {cameras} camera{'s' * (cameras != 1)}"
    if processes > 1:
        basis += f", {processes} inference processes"
    given = {key: value for key, value in (("engines", set_engines), ("threads", set_threads)) if value is not None}
    if not given:
        why = f"auto: {basis}"
    else:
        chosen = [key for key in ("engines", "threads") if key not in given]
        stated = "; ".join(f"{key} {value} from the site file" for key, value in given.items())
        why = f"{stated}; {' and '.join(chosen)} auto: {basis}" if chosen else f"{stated} ({basis})"
    crowded = ""
    running = engines * (threads or share)  # threads 0: ONNX Runtime's choice, a thread per core
    if given and not accelerated(model) and running > share:
        crowded = (
            f"{engines} engine(s) x {threads or share} thread(s) = {running} threads on {share} core(s): "
            "they wait for each other; leave engines and threads to auto"
        )
    return Sizing(engines, threads, why, crowded)


def cpu_threads(model: ModelConfig) -> int:
    """The threads one engine of ``model`` runs on: as set, or (``auto``, where nothing sized it for a
    share of the cores) every core this process may use."""
    return usable_cores() if model.threads == "auto" else int(model.threads)
