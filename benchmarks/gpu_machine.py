"""What the machine has, for ``benchmarks.gpu_check`` and ``benchmarks.inference_throughput``: the versions of the
driver, GPU, CUDA, TensorRT, ONNX Runtime and the rest; the probes that ask, as another user, whether it sees
the GPU; and whether TensorRT here is the real one or the test stand-in."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from common.models.tensorrt import gpu_identity, tensorrt_problems


def is_standin(module: object) -> bool:
    """The test stand-in of ``tensorrt`` or ``cuda`` (tests/standin), which has a ``standin`` test hook."""
    return module is not None and getattr(module, "standin", None) is not None


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot be measured here, or None: what ``tensorrt_problems`` finds, or the test stand-in,
    whose figures would be ONNX Runtime's on the CPU."""
    problems = tensorrt_problems()
    if is_standin(sys.modules.get("tensorrt")):
        return "the tensorrt on the path is the test stand-in (tests/standin), not TensorRT"
    return "; ".join(problems) or None


# Run by run_probe as the services' user, each prints what that user sees of the GPU as one line of JSON:
# through cuda-python, or, where this interpreter cannot run as that user, through the CUDA driver API alone.
CUDART_PROBE = """
import json, os
try:
    from cuda.bindings import runtime as cudart
except ImportError:
    from cuda import cudart
error, properties = cudart.cudaGetDeviceProperties(0)
name = properties.name if int(error) == 0 else None
name = name.decode(errors="replace") if isinstance(name, bytes) else name
print(json.dumps({"gpu": name and name.rstrip("\\x00"), "error": None if name else getattr(error, "name", str(error)),
                  "groups": sorted(os.getgroups()), "via": "cuda-python"}))
"""
DRIVER_PROBE = """
import ctypes, json, os
cuda, name, count = ctypes.CDLL("libcuda.so.1"), ctypes.create_string_buffer(256), ctypes.c_int(0)
error = cuda.cuInit(0) or cuda.cuDeviceGetCount(ctypes.byref(count)) or (100 if not count.value else 0)
error = error or cuda.cuDeviceGetName(name, 256, 0)
print(json.dumps({"gpu": None if error else name.value.decode(), "error": f"CUresult {error}" if error else None,
                  "groups": sorted(os.getgroups()), "via": "the CUDA driver API (libcuda)"}))
"""


# What a probe's environment keeps of this one (root's): only what finding the GPU and its libraries needs, and the
# stand-in's settings (tests/standin, inert without it). Never root's HOME, PYTHON* or the rest.
PROBE_VARIABLES = ("LANG", "LC_ALL", "LD_LIBRARY_PATH")
PROBE_PREFIXES = ("CUDA_", "NVIDIA_", "EDGESIGHT_STANDIN_")
PROBE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def import_folders(package: str) -> list[str]:
    """The ``sys.path`` folders from which this interpreter imports ``package`` (the stand-in's from PYTHONPATH,
    cuda-python's from site-packages): an isolated probe (``-I``, no PYTHONPATH) is given them explicitly."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations is not None:
        return list(dict.fromkeys(str(Path(location).parent) for location in spec.submodule_search_locations))
    return [str(Path(spec.origin).parent)] if spec.origin else []


def probe_environment(home: str) -> dict[str, str]:
    """The whole environment of a probe run as another user: a fixed PATH, what ``PROBE_VARIABLES`` and
    ``PROBE_PREFIXES`` keep, ``home`` as HOME, no user site-packages."""
    kept = {
        name: value for name, value in os.environ.items() if name in PROBE_VARIABLES or name.startswith(PROBE_PREFIXES)
    }
    return kept | {"PATH": PROBE_PATH, "LANG": kept.get("LANG", "C.UTF-8"), "HOME": home, "PYTHONNOUSERSITE": "1"}


def run_probe(
    as_user: list[str], python: str, probe: str, via: str, folders: list[str] | None = None
) -> dict[str, Any]:
    """The JSON that ``probe`` printed, run by ``python`` as another user (``as_user``: setpriv and its options),
    or what stopped it (``failed``).

    Run as root, for a user that others may share: Python isolated (``-I``: no user site-packages, no PYTHON*
    variables, no current folder on the path), with ``folders`` put explicitly on its ``sys.path``; the minimal
    environment of ``probe_environment``; HOME a folder that does not exist, in a new one only root can open (the
    probe writes nothing, and no one can plant anything there); run from ``/``."""
    prelude = f"import sys; sys.path[:0] = [f for f in {list(folders or [])!r} if f not in sys.path]\n"
    with tempfile.TemporaryDirectory(prefix="edgesight-probe-") as private:
        command = [*as_user, python, "-I", "-c", prelude + probe]
        environment = probe_environment(str(Path(private) / "home"))
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=45, cwd="/", env=environment)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"failed": f"{via}: {exc}"}
    try:
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        tail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
        return {"failed": f"{via}: {tail}"}


def _distribution(*names: str) -> str | None:
    for name in names:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def machine_versions() -> dict[str, Any]:
    """What runs here, and one line of it."""
    import onnxruntime

    found: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    found["onnxruntime"] = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    found["nvidia_smi"] = _nvidia_smi()
    found["jetson"] = _jetson()
    try:
        import tensorrt

        found["tensorrt"] = {
            "version": tensorrt.__version__,
            "module": tensorrt.__file__,
            "standin": is_standin(tensorrt),
        }
    except ImportError as exc:
        found["tensorrt"] = {"error": str(exc)}
    distributions = [("tensorrt-cu12", "tensorrt-cu13", "tensorrt"), ("cuda-python",), ("cuda-bindings",)]
    found["packages"] = [package for package in (_distribution(*names) for names in distributions) if package]
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        runtime, driver = cudart.cudaRuntimeGetVersion()[1], cudart.cudaDriverGetVersion()[1]
        found["cuda"] = {"runtime": _cuda_version(runtime or 0), "driver": _cuda_version(driver or 0)}
        error, properties = cudart.cudaGetDeviceProperties(0)
        found["gpu"] = (
            gpu_identity(properties) if int(error) == 0 else f"none visible ({getattr(error, 'name', error)})"
        )
        found["integrated"] = bool(getattr(properties, "integrated", 0)) if int(error) == 0 else None
    except ImportError as exc:
        found["cuda"] = {"error": str(exc)}
    smi = found["nvidia_smi"]
    providers = [p.removesuffix("ExecutionProvider") for p in found["onnxruntime"]["providers"]]
    trt = found["tensorrt"]
    cuda = found["cuda"]
    parts = [
        f"GPU {found['gpu']}{' (integrated)' if found.get('integrated') else ''}" if "gpu" in found else "",
        f"nvidia-smi: {smi['name']}, driver {smi['driver']}" if "driver" in smi else smi["error"],
        found["jetson"] or "",
        f"Python {found['python']}",
        f"TensorRT {trt['version']}{' (stand-in)' if trt['standin'] else ''}" if "version" in trt else "no TensorRT",
        f"CUDA runtime {cuda['runtime']} / driver {cuda['driver']}" if "runtime" in cuda else "no cuda-python",
        ", ".join(found["packages"]),
        f"onnxruntime {onnxruntime.__version__} ({', '.join(providers)})",
        f"numpy {np.__version__}",
    ]
    found["line"] = " · ".join(part for part in parts if part)
    return found


def _jetson() -> str | None:
    """The module and its L4T release ("NVIDIA Jetson AGX Orin Developer Kit, L4T R36.4.3"); None elsewhere."""
    release = Path("/etc/nv_tegra_release")
    if not release.is_file():
        return None
    head = release.read_text(errors="replace").splitlines()[0]
    found = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", head)
    l4t = f"L4T R{found[1]}.{found[2]}" if found else head.strip("# ")
    model = Path("/proc/device-tree/model")
    return f"{model.read_text(errors='replace').strip(chr(0)).strip()}, {l4t}" if model.is_file() else l4t


def _nvidia_smi() -> dict[str, str]:
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        result = subprocess.run(query, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return {"error": "no nvidia-smi"}
    except OSError as exc:
        return {"error": f"nvidia-smi: {exc.strerror or exc}"}
    except subprocess.TimeoutExpired:
        return {"error": "nvidia-smi did not answer in 30 s"}
    line = result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else ""
    if not line:
        return {"error": f"nvidia-smi failed: {(result.stderr or result.stdout).strip()[:200]}"}
    name, driver, memory = ([*line.split(", "), "", ""])[:3]
    return {"name": name, "driver": driver, "memory": memory}
