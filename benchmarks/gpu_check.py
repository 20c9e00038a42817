"""The first run of the TensorRT backend on a machine with an NVIDIA GPU; ``scripts/gpu-check.sh`` runs it.

Seven steps, each printed as one line (PASS, FAIL or SKIP, with its figures), the whole report also as JSON:

1. ``versions``: driver and GPU, Python, TensorRT, cuda-python, ONNX Runtime and its providers, NumPy;
2. ``uid-10001``: the GPU as the services' user sees it (uid 10001 in group video, 44), as a pod runs;
3. ``build``: YOLOX-Nano's engine built into an empty cache folder, timed, with TensorRT's build phases;
4. ``cache``: opened again, the engine comes from the cache, with no second build;
5. ``outputs``: TensorRT against ONNX Runtime on the CPU over frames of the shared clip: raw outputs within
   FP16's tolerance, and the same persons detected (matched by IoU);
6. ``batches``: a copy with a dynamic batch, batches 1 to 4, each against ONNX Runtime;
7. ``throughput``: frames/s of TensorRT at batch 1 and 4, of ONNX Runtime's CUDA provider (where it has
   one) and of its CPU provider, on the same input.

Each step has a time limit, and all of them a budget (an engine build takes minutes on an Orin Nano): past
it the report so far is written, what was not run is marked SKIP, and the run ends. ``--standin`` runs
everything on the test stand-in (``tests/standin`` first on ``PYTHONPATH``): no GPU, no TensorRT, ONNX
Runtime on the CPU underneath. It proves that this check works, not that a GPU does, and says so on top.

``benchmarks.gpu_report`` holds the report, ``benchmarks.gpu_machine`` what the machine has (also what
``benchmarks.inference_throughput`` asks before it measures TensorRT), ``benchmarks.gpu_compare`` how far
TensorRT is from ONNX Runtime.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from benchmarks._backend_bench import dynamic_batch_copy, frames_per_second
from benchmarks.gpu_compare import FP16_ATOL, FP16_RTOL, FP16_SHARE, MATCH_IOU, compare, same_persons
from benchmarks.gpu_machine import (
    CUDART_PROBE,
    DRIVER_PROBE,
    import_folders,
    is_standin,
    machine_versions,
    run_probe,
)
from benchmarks.gpu_report import FAIL, PASS, SKIP, STANDIN_NOTICE, Records, Report, Step, StepFailed, StepSkipped
from common.assets import find_asset
from common.models import Backend, ModelFile, OnnxRuntimeBackend
from common.models.engine_cache import CACHE_VARIABLE, CACHED_SUFFIX
from common.models.loading import ModelSpec, load_model_spec
from common.models.tensorrt import TensorRTBackend, tensorrt_problems
from services.inference.detector import Detector
from services.inference.processing import Letterbox

SERVICE_UID, VIDEO_GID = 10001, 44  # the images' user, and the group (video) that JetPack gives its GPU devices
BUILT, LOADED = "TensorRT engine built and cached", "TensorRT engine loaded from the cache"
Array = npt.NDArray[Any]


@dataclass(frozen=True)
class Options:
    standin: bool
    frames: int
    seconds: float
    verbose: bool


class Check:
    """The steps, and what they hand on to one another: the model, the frames, the open backends."""

    def __init__(self, options: Options, log: Records) -> None:
        self.options, self.log = options, log
        self.folder = Path(tempfile.mkdtemp(prefix="edgesight-gpu-check-"))
        self.cache = self.folder / "engines"  # a fresh cache: the build step must build
        os.environ[CACHE_VARIABLE] = str(self.cache)
        self.backends: dict[str, Backend] = {}
        self._spec: ModelSpec | None = None
        self._frames: list[npt.NDArray[np.uint8]] = []
        self._letterbox: Letterbox | None = None

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            self._spec = load_model_spec(find_asset("yolox_nano.onnx"))
        return self._spec

    def frames(self) -> list[npt.NDArray[np.uint8]]:
        """``--frames`` frames of the shared clip, spread over its crowded part (from frame 60 on)."""
        if not self._frames:
            wanted = set(np.linspace(60, 300, self.options.frames).astype(int).tolist())
            with av.open(str(find_asset("people.mp4"))) as container:
                for index, frame in enumerate(container.decode(video=0)):
                    if index in wanted:
                        self._frames.append(frame.to_ndarray(format="bgr24"))
                    if index >= max(wanted):
                        break
        return self._frames

    def tensor(self, batch: int, start: int = 0) -> Array:
        """``batch`` frames of the clip letterboxed as the inference service does, from frame ``start`` on."""
        if self._letterbox is None:
            self._letterbox = Letterbox(self.spec.manifest, *(self.spec.manifest.input_size or (416, 416)))
        frames = self.frames()
        tensor: Array = self._letterbox.batch(batch).copy()
        for row in range(batch):
            self._letterbox.place(frames[(start + row) % len(frames)], tensor[row])
        return tensor

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the steps: each returns its line and its details, or raises StepFailed / StepSkipped

    def versions(self) -> tuple[str, dict[str, Any]]:
        found = machine_versions()
        problems = tensorrt_problems()
        module = sys.modules.get("tensorrt")
        if self.options.standin and module is not None and not is_standin(module):
            problems.append(
                f"--standin, but tensorrt comes from {module.__file__}: put tests/standin first on PYTHONPATH"
            )
        if not self.options.standin and is_standin(module):
            problems.append("tensorrt comes from tests/standin, the test stand-in: not TensorRT (clear PYTHONPATH)")
        found["problems"] = problems
        if problems:
            raise StepFailed(f"TensorRT cannot run here: {'; '.join(problems)} [{found['line']}]", found)
        return found["line"], found

    def service_user(self) -> tuple[str, dict[str, Any]]:
        if os.geteuid() != 0:
            raise StepSkipped(f"not root (uid {os.geteuid()}): cannot switch to uid {SERVICE_UID}")
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            raise StepFailed(f"setpriv (util-linux) is not installed: cannot run as uid {SERVICE_UID}")
        # that user, its group video and nothing more: no capabilities to hand on, no gaining any (setuid files)
        as_service = [setpriv, "--no-new-privs", "--inh-caps=-all"]
        as_service += ["--reuid", str(SERVICE_UID), "--regid", str(SERVICE_UID), "--groups", str(VIDEO_GID)]
        # the probe runs isolated: cuda-python (or the stand-in) from where this interpreter imports it
        seen = run_probe(as_service, sys.executable, CUDART_PROBE, "cuda-python", import_folders("cuda"))
        details: dict[str, Any] = {"cuda_python": seen}
        system_python = Path("/usr/bin/python3")
        if "gpu" not in seen and "error" not in seen and system_python.is_file() and not self.options.standin:
            # this interpreter cannot run as that user (a venv in root's home): ask the driver itself
            seen = run_probe(as_service, str(system_python), DRIVER_PROBE, "the CUDA driver API")
            details["driver"] = seen
        who = f"uid {SERVICE_UID} (groups {', '.join(map(str, seen.get('groups', [VIDEO_GID])))})"
        if seen.get("gpu"):
            return f"{who} sees {seen['gpu']} through {seen['via']}", details
        if seen.get("error"):
            raise StepFailed(
                f"{who} sees no GPU: {seen['error']}; it must be in group video ({VIDEO_GID}) on a Jetson, and the "
                "container needs NVIDIA's runtime",
                details,
            )
        raise StepFailed(f"could not run as uid {SERVICE_UID}: {seen.get('failed')}", details)

    def build(self) -> tuple[str, dict[str, Any]]:
        mark = len(self.log.records)
        started = time.perf_counter()
        backend = TensorRTBackend(self.spec.file(), max_batch=1)
        seconds = time.perf_counter() - started
        provider = backend.provider
        backend.close()
        builds = len(self.log.since(mark, BUILT))
        engines = sorted(self.cache.glob(f"*{CACHED_SUFFIX}"))
        phases = [
            {
                "phase": getattr(r, "phase", "?"),
                "at_s": getattr(r, "elapsed_s", None),
                "steps": getattr(r, "steps", None),
            }
            for r in self.log.since(mark, "building TensorRT engine")
        ]
        engine_bytes = sum(engine.stat().st_size for engine in engines)
        details = {
            "open_s": round(seconds, 2),
            "builds": builds,
            "provider": provider,
            "cache": str(self.cache),
            "engine_bytes": engine_bytes,
            "phases": phases,
            "heartbeats": len(self.log.since(mark, "still building TensorRT engine")),
        }
        if builds != 1 or len(engines) != 1:
            raise StepFailed(
                f"expected one build into the empty cache; builds {builds}, engines {len(engines)}", details
            )
        shown = ", ".join(f"{p['phase']} at {p['at_s']} s" for p in phases) or "none reported (TensorRT before 10)"
        return f"built in {seconds:.1f} s ({engine_bytes / 2**20:.1f} MiB) by {provider}; phases: {shown}", details

    def reuse(self) -> tuple[str, dict[str, Any]]:
        mark = len(self.log.records)
        started = time.perf_counter()
        self.backends["tensorrt-1"] = backend = TensorRTBackend(self.spec.file(), max_batch=1)
        seconds = time.perf_counter() - started
        builds = len(self.log.since(0, BUILT))
        details: dict[str, Any] = {"open_s": round(seconds, 3), "builds": builds, "provider": backend.provider}
        if is_standin(sys.modules.get("tensorrt")):
            details["standin_builds"] = sys.modules["tensorrt"].standin.builds
        if len(self.log.since(mark, BUILT)) or not self.log.since(mark, LOADED):
            raise StepFailed(f"the second open built again (builds so far: {builds}) instead of loading", details)
        return f"opened from the cache in {seconds:.2f} s, no build (builds in all: {builds})", details

    def outputs(self) -> tuple[str, dict[str, Any]]:
        tensorrt = self.backends["tensorrt-1"]
        reference = self.backends["onnxruntime-cpu"] = OnnxRuntimeBackend(self.spec.file(), ["CPUExecutionProvider"])
        errors = [
            compare(tensorrt.run(self.tensor(1, i)), reference.run(self.tensor(1, i)))
            for i in range(len(self.frames()))
        ]
        ours, theirs = Detector(self.spec, tensorrt), Detector(self.spec, reference)  # closed with the backends
        persons = [
            same_persons(got, want, theirs.score_threshold)
            for got, want in zip(ours.detect(self.frames())[0], theirs.detect(self.frames())[0], strict=True)
        ]
        worst = {key: max(e[key] for e in errors) for key in ("max_abs", "max_rel")} | {
            "within": min(e["within"] for e in errors)
        }
        confident, matched = sum(p["confident"] for p in persons), sum(p["matched"] for p in persons)
        counted = (sum(p["persons"] for p in persons), sum(p["reference_persons"] for p in persons))
        tolerance = f"|TensorRT - ONNX Runtime| <= {FP16_ATOL} + {FP16_RTOL} |ONNX Runtime|"
        details = {"frames": len(errors), "tolerance": tolerance, "errors": errors, "worst": worst, "persons": persons}
        summary = (
            f"{len(errors)} frames: max abs error {worst['max_abs']:.4f}, max rel {worst['max_rel']:.2%}, "
            f"{worst['within']:.3%} within FP16 tolerance; persons {counted[0]} vs {counted[1]} (ONNX Runtime), "
            f"{matched}/{confident} confident ones matched (IoU >= {MATCH_IOU}, "
            f"min {min((p['min_iou'] for p in persons), default=1.0):.3f})"
        )
        counts_agree = all(
            abs(p["persons"] - p["reference_persons"]) <= max(1, 0.05 * p["reference_persons"]) for p in persons
        )
        if worst["within"] < FP16_SHARE or matched < confident or not counts_agree:
            raise StepFailed(summary, details)
        return summary, details

    def batches(self) -> tuple[str, dict[str, Any]]:
        model = dynamic_batch_copy(self.spec.model_path, self.folder / "yolox_nano_dynamic.onnx")
        mark, started = len(self.log.records), time.perf_counter()
        tensorrt = self.backends["tensorrt-4"] = TensorRTBackend(ModelFile.at(model, "yolox_nano_dynamic"), max_batch=4)
        opened = time.perf_counter() - started
        how = "built" if self.log.since(mark, BUILT) else "loaded"
        reference = self.backends["onnxruntime-cpu-4"] = OnnxRuntimeBackend(
            ModelFile.at(model, "yolox_nano_dynamic"), ["CPUExecutionProvider"], max_batch=4
        )
        results = {}
        for batch in range(1, tensorrt.max_batch + 1):
            tensor = self.tensor(batch)
            results[str(batch)] = compare(tensorrt.run(tensor), reference.run(tensor))
            results[str(batch)]["matched"] = results[str(batch)]["within"] >= FP16_SHARE
        details = {
            "open_s": round(opened, 2),
            "built": how == "built",
            "max_batch": tensorrt.max_batch,
            "batches": results,
        }
        shown = ", ".join(f"{b} {'ok' if r['matched'] else 'DIFFERS'}" for b, r in results.items())
        worst = max(r["max_abs"] for r in results.values())
        summary = f"engine for batches 1-{tensorrt.max_batch} {how} in {opened:.1f} s; {shown} (max abs {worst:.4f})"
        if tensorrt.max_batch != 4 or not all(r["matched"] for r in results.values()):
            raise StepFailed(summary, details)
        return summary, details

    def throughput(self) -> tuple[str, dict[str, Any]]:
        import onnxruntime

        seconds = self.options.seconds
        sides: dict[str, tuple[Backend, int]] = {"tensorrt_batch1": (self.backends["tensorrt-1"], 1)}
        if "tensorrt-4" in self.backends:
            sides["tensorrt_batch4"] = (self.backends["tensorrt-4"], 4)
        notes = []
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            cuda = self.backends["onnxruntime-cuda"] = OnnxRuntimeBackend(self.spec.file(), ["CUDAExecutionProvider"])
            if cuda.provider == "CUDAExecutionProvider":
                sides["onnxruntime_cuda_batch1"] = (cuda, 1)
            else:
                notes.append(f"ONNX Runtime's CUDA provider did not start (ran on {cuda.provider}): not measured")
        else:
            notes.append("this onnxruntime has no CUDA provider (onnxruntime-gpu has)")
        cpu = self.backends.get("onnxruntime-cpu") or OnnxRuntimeBackend(self.spec.file(), ["CPUExecutionProvider"])
        self.backends["onnxruntime-cpu"] = cpu
        sides["onnxruntime_cpu_batch1"] = (cpu, 1)
        fps = {
            f"{side}_fps": frames_per_second(backend, self.tensor(batch), seconds)
            for side, (backend, batch) in sides.items()
        }
        ratio = fps["tensorrt_batch1_fps"] / fps["onnxruntime_cpu_batch1_fps"]
        details: dict[str, Any] = fps | {"seconds_each": seconds, "tensorrt_batch1_over_cpu": ratio, "notes": notes}
        shown = ", ".join(f"{side.replace('_', ' ')} {fps[f'{side}_fps']:,.0f}" for side in sides)
        return (
            f"frames/s: {shown}; TensorRT batch 1 = {ratio:.1f}x ONNX Runtime CPU{''.join('; ' + n for n in notes)}",
            details,
        )


@dataclass(frozen=True)
class Plan:
    name: str
    limit_s: float
    needs: tuple[str, ...]
    run: Callable[[Check], tuple[str, dict[str, Any]]]


PLANS = (
    Plan("versions", 60, (), Check.versions),
    Plan("uid-10001", 60, ("versions",), Check.service_user),
    Plan("build", 300, ("versions",), Check.build),
    Plan("cache", 90, ("build",), Check.reuse),
    Plan("outputs", 120, ("cache",), Check.outputs),
    Plan("batches", 300, ("versions",), Check.batches),
    Plan("throughput", 120, ("cache",), Check.throughput),
)


def run_steps(check: Check, report: Report, budget: float) -> None:
    deadline = time.monotonic() + budget
    for index, plan in enumerate(PLANS):
        missing = [name for name in plan.needs if report.status(name) != PASS]
        left = deadline - time.monotonic()
        if missing or left < 1:
            reason = f"needs {', '.join(missing)} to pass" if missing else "no time left of --budget"
            report.add(Step(plan.name, SKIP, reason, 0.0))
            continue
        limit = min(plan.limit_s, left)
        later = [p.name for p in PLANS[index + 1 :]]
        timer = threading.Timer(limit, _out_of_time, (report, check, plan.name, limit, later))
        timer.daemon = True
        started = time.perf_counter()
        timer.start()
        try:
            summary, details = plan.run(check)
            status = PASS
        except StepSkipped as exc:
            status, summary, details = SKIP, str(exc), {}
        except StepFailed as exc:
            status, summary, details = FAIL, str(exc), exc.details
        except Exception as exc:  # a clear line, not a traceback; the traceback goes into the JSON
            status, summary, details = FAIL, f"{type(exc).__name__}: {exc}", {"traceback": traceback.format_exc()}
            if check.options.verbose:
                traceback.print_exc()
        finally:
            timer.cancel()
        report.add(Step(plan.name, status, summary, round(time.perf_counter() - started, 2), details))


def _out_of_time(report: Report, check: Check, name: str, limit: float, later: list[str]) -> None:
    """A step past its limit (a build that does not end) cannot be interrupted: report, then end the process."""
    report.add(Step(name, FAIL, f"did not finish within {limit:.0f} s (its limit, or what --budget left)", limit))
    for other in later:
        report.add(Step(other, SKIP, f"not run: {name} ran out of time", 0.0))
    status = report.close()
    shutil.rmtree(check.folder, ignore_errors=True)
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--standin", action="store_true", help="run on tests/standin (no GPU): proves the check only")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the whole report here")
    parser.add_argument("--frames", type=int, default=8, help="frames of the clip compared (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of each throughput side (default 3)")
    parser.add_argument("--budget", type=float, default=450, help="seconds for all the steps (default 450)")
    parser.add_argument("--environment", default="", help="how the interpreter was found or made (the script's)")
    parser.add_argument("--environment-seconds", type=float, default=0.0, help="how long making it took")
    parser.add_argument("--verbose", action="store_true", help="show the backend's log and tracebacks")
    args = parser.parse_args(argv)
    if args.standin:
        print(STANDIN_NOTICE, flush=True)
    log = Records(args.verbose)
    logging.getLogger().addHandler(log)
    logging.getLogger().setLevel(logging.INFO)
    report = Report(args.json, args.standin)
    report.add(Step("environment", PASS, args.environment or f"{sys.executable} as given", args.environment_seconds))
    options = Options(args.standin, max(1, args.frames), args.seconds, args.verbose)
    check = Check(options, log)
    try:
        run_steps(check, report, args.budget)
    finally:
        check.close()
    return report.close()


if __name__ == "__main__":
    sys.exit(main())
