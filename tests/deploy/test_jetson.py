"""TensorRT's deployment, on a Jetson above all: the pins, the image, the pods' groups and the engine cache.

No GPU, Docker engine or cluster is here, so each part is checked by what it does where that can run: the extras by
``packaging`` against the versions PyPI has (read offline, from pyproject.toml), the Dockerfile's RUN scripts by
running them in ``sh`` with every outside command stubbed (apt, python3, useradd), the k3s overlay by kustomize and
the init container's own script, the compose override by docker-compose's merge.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.test_manifests import COMPOSE, K3S, REPO, kustomize
from tests.support import tool

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from the test extra
    import tomli as tomllib

DOCKERFILE = COMPOSE / "Dockerfile"
JETSON_COMPOSE = COMPOSE / "docker-compose.jetson.yml"
JETPACK_IMAGE = "nvcr.io/nvidia/l4t-jetpack:r36.4.0"
VIDEO_GID = 44  # owns /dev/nvmap, /dev/nvgpu/*, /dev/nvhost-* on JetPack 6
GPU_PODS = ("edgesight-inference", "edgesight-apps", "edgesight-ingest")
GPU_SERVICES = ("inference", "apps", "ingest")


# --- the extras ------------------------------------------------------------------------------


def extra(name: str) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["optional-dependencies"][name]]


def named(requirements: list[Requirement], *names: str) -> list[Requirement]:
    return [r for r in requirements if canonicalize_name(r.name) in names]


@pytest.mark.parametrize("name", ["tensorrt", "jetson"])
def test_cuda_python_stays_on_cuda_12(name: str) -> None:
    """cuda-python / cuda-bindings 13 need driver 580: every call fails with cudaErrorInsufficientDriver on
    JetPack 6 (540) and on a CUDA 12 desktop."""
    (cuda,) = named(extra(name), "cuda-python", "cuda-bindings")
    assert cuda.specifier.contains("12.6.2.post1"), cuda  # PyPI's 12.6 build, with cuda.bindings
    for cuda_13 in ("13.0.0", "13.4.4", "14.0"):
        assert not cuda.specifier.contains(cuda_13, prereleases=True), f"{name}: {cuda} lets {cuda_13} in"


def test_the_jetson_cuda_python_runs_on_every_jetpack_6_driver() -> None:
    """Up to 12.6 cuda-python's runtime is Python over the driver API, which JetPack 6.0's CUDA 12.2 driver has;
    12.9 on links CUDA 12.9's own runtime."""
    (cuda,) = named(extra("jetson"), "cuda-python")
    assert cuda.specifier.contains("12.2.1") and cuda.specifier.contains("12.6.2.post1")
    assert not cuda.specifier.contains("12.9.0") and not cuda.specifier.contains("12.8.0")


def test_the_tensorrt_extra_is_tensorrt_10_for_cuda_12() -> None:
    """PyPI's plain `tensorrt` 10.13.2 and later pulls tensorrt_cu13; the cu12 package says its CUDA."""
    (tensorrt,) = [r for r in extra("tensorrt") if canonicalize_name(r.name).startswith("tensorrt")]
    assert canonicalize_name(tensorrt.name) == "tensorrt-cu12"
    assert tensorrt.specifier.contains("10.3.0") and tensorrt.specifier.contains("10.16.1.11")
    for other in ("9.3.0", "11.0.0.114"):
        assert not tensorrt.specifier.contains(other), tensorrt


def test_the_jetson_extra_leaves_tensorrt_to_jetpack() -> None:
    """PyPI's aarch64 TensorRT and CUDA wheels are SBSA builds: on a Tegra they would shadow JetPack's own."""
    requirements = extra("jetson")
    pypi_gpu = [r for r in requirements if re.match(r"tensorrt|nvidia-", canonicalize_name(r.name))]
    assert not pypi_gpu, f"the jetson extra installs {pypi_gpu} from PyPI"
    (numpy,) = named(requirements, "numpy")
    assert not numpy.specifier.contains("2.0.0"), "JetPack 6's Python modules predate NumPy 2"


# --- the Dockerfile's RUN scripts, run with stubs ----------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage as Docker reads them: continuations joined, comment lines dropped."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def run_script(stage: list[tuple[str, str]], containing: str) -> str:
    (script,) = [text for keyword, text in stage if keyword == "RUN" and containing in text]
    return script


# Paths the scripts write or probe, moved under the test's folder; `ls`, `mkdir`, `rm` and `chmod` are real.
OUTSIDE_PATHS = re.compile(
    r"(?<![\w./-])(/opt/edgesight|/opt/build|/usr/local/cuda|/wheels|/run/edgesight|/var/lib/edgesight"
    r"|/var/lib/apt/lists|/tmp/probe)"
)
PYTHON3_STUB = """#!/bin/sh
echo "python3 $*" >> "$STUB_LOG"
if [ "$1" = -m ] && [ "$2" = venv ]; then
    for target; do :; done
    case "$target" in */probe) exit "$STUB_VENV_RC";; esac
    mkdir -p "$target/bin"
    printf '%s\\n' '#!/bin/sh' 'echo "venv-python $*" >> "$STUB_LOG"' \\
        'case "$*" in *find_spec*) exit "$STUB_VENV_TENSORRT_RC";; esac' > "$target/bin/python"
    chmod +x "$target/bin/python"
    exit 0
fi
if [ "$1" = -c ]; then
    case "$2" in *Python.h*) exit "$STUB_HEADERS_RC";; *find_spec*) exit "$STUB_TENSORRT_RC";; esac
fi
exit 0
"""


@dataclass(frozen=True)
class Base:
    """What a base image has, as the stubs report it."""

    python3: bool = True
    venv: bool = True  # `python3 -m venv` works (Ubuntu's needs python3-venv)
    headers: bool = True  # Python.h
    passt: bool = True  # in its apt sources


SLIM = Base()  # python:3.10-slim-bookworm
L4T = Base(venv=False, headers=False, passt=False)  # l4t-jetpack: Ubuntu 22.04's python3 alone, no passt
NO_PYTHON = Base(python3=False, venv=False, headers=False)


def run_stubbed(
    script: str,
    root: Path,
    base: Base,
    extras: str = "",
    tensorrt_in_system: bool = False,
    tensorrt_in_venv: bool = True,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs a RUN script under /bin/sh as Docker would, with outside commands stubbed; the commands they logged."""
    stubs = root / "stubs"
    stubs.mkdir(exist_ok=True)
    for real in ("sh", "ls", "mkdir", "rm", "chmod", "cat"):
        target = stubs / real
        if not target.exists():
            target.symlink_to(tool(real))
    logged = {"apt-get": 0, "apt-cache": 0 if base.passt else 100, "useradd": 0, "chown": 0}
    logged |= {bare: 127 for bare in ("pip", "pip3", "python")}  # never called bare: neither base may have them
    for name, rc in logged.items():
        (stubs / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$STUB_LOG"\nexit {rc}\n')
        (stubs / name).chmod(0o755)
    (stubs / "python3").unlink(missing_ok=True)
    if base.python3:
        (stubs / "python3").write_text(PYTHON3_STUB)
        (stubs / "python3").chmod(0o755)
    (root / "wheels").mkdir(exist_ok=True)
    (root / "wheels" / "edgesight-0.1.0-cp310-cp310-linux_x86_64.whl").touch()
    log = root / "log"
    log.write_text("")
    env = {
        "PATH": str(stubs),
        "EXTRAS": extras,
        "STUB_LOG": str(log),
        "STUB_VENV_RC": "0" if base.venv else "1",
        "STUB_HEADERS_RC": "0" if base.headers else "1",
        "STUB_TENSORRT_RC": "0" if tensorrt_in_system else "1",
        "STUB_VENV_TENSORRT_RC": "0" if tensorrt_in_venv else "1",
    }
    rebased = OUTSIDE_PATHS.sub(lambda m: f"{root}{m.group(1)}", script)
    result = subprocess.run(["/bin/sh", "-c", rebased], capture_output=True, text=True, env=env, check=False)
    return result, log.read_text().splitlines()


def installed(log: list[str]) -> set[str]:
    """The packages the script asked apt for."""
    words = {word for line in log if line.startswith("apt-get install") for word in line.split()[2:]}
    return {word for word in words if not word.startswith("-")}


def test_every_run_script_is_valid_sh() -> None:
    for stage in dockerfile_stages():
        for keyword, text in stage:
            if keyword == "RUN":
                result = subprocess.run(["/bin/sh", "-n", "-c", text], capture_output=True, text=True, check=False)
                assert result.returncode == 0, f"{text[:80]}...: {result.stderr}"


@pytest.mark.parametrize(
    ("base", "wanted"),
    [
        (SLIM, {"build-essential"}),
        (L4T, {"build-essential", "python3-venv", "python3-dev"}),
        (NO_PYTHON, {"build-essential", "python3", "python3-venv", "python3-dev"}),
    ],
    ids=["python-slim", "l4t-jetpack", "no-python"],
)
def test_the_build_stage_installs_what_the_base_lacks_and_builds_in_a_venv(
    base: Base, wanted: set[str], tmp_path: Path
) -> None:
    build = dockerfile_stages()[0]
    result, log = run_stubbed(run_script(build, "apt-get install"), tmp_path, base)
    assert result.returncode == 0, result.stderr
    assert installed(log) == wanted
    result, log = run_stubbed(run_script(build, "pip wheel"), tmp_path, SLIM)
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("venv-python -m pip wheel") for line in log), log
    assert not [line for line in log if line.split()[0] in ("pip", "pip3", "python")], log


@pytest.mark.parametrize(
    ("base", "extras", "tensorrt_in_system", "wanted"),
    [
        (SLIM, "", False, {"bubblewrap", "passt"}),
        (SLIM, "tensorrt,gpio", False, {"bubblewrap", "passt"}),
        (L4T, "jetson", False, {"bubblewrap", "python3-venv", "python3-libnvinfer"}),
        (L4T, "jetson", True, {"bubblewrap", "python3-venv"}),
        (L4T, "", False, {"bubblewrap", "python3-venv"}),
    ],
    ids=["cpu", "desktop-gpu", "jetpack-without-tensorrt-python", "jetpack-with-it", "l4t-cpu"],
)
def test_the_runtime_stage_installs_jetpacks_tensorrt_only_for_jetson(
    base: Base, extras: str, tensorrt_in_system: bool, wanted: set[str], tmp_path: Path
) -> None:
    script = run_script(dockerfile_stages()[-1], "apt-get install")
    result, log = run_stubbed(script, tmp_path, base, extras, tensorrt_in_system=tensorrt_in_system)
    assert result.returncode == 0, result.stderr
    assert installed(log) == wanted


def test_pypis_tensorrt_is_refused_on_a_jetson_base(tmp_path: Path) -> None:
    """L4T's CUDA is the aarch64-linux target (SBSA's is sbsa-linux): PyPI's aarch64 TensorRT is not for it."""
    (tmp_path / "usr/local/cuda-12.6/targets/aarch64-linux").mkdir(parents=True)
    script = run_script(dockerfile_stages()[-1], "apt-get install")
    result, log = run_stubbed(script, tmp_path, L4T, "tensorrt")
    assert result.returncode != 0 and "EXTRAS=jetson" in result.stderr
    assert not installed(log)
    result, _ = run_stubbed(script, tmp_path, L4T, "jetson")
    assert result.returncode == 0, result.stderr


def venv_run(tmp_path: Path, extras: str, tensorrt_in_venv: bool = True) -> tuple[int, list[str], str]:
    script = run_script(dockerfile_stages()[-1], "pip install")
    result, log = run_stubbed(script, tmp_path, SLIM, extras, tensorrt_in_venv=tensorrt_in_venv)
    return result.returncode, log, result.stderr


@pytest.mark.parametrize(
    ("extras", "system_site", "requested"),
    [("", False, None), ("tensorrt,gpio", False, "edgesight[tensorrt,gpio]"), ("jetson", True, "edgesight[jetson]")],
)
def test_the_venv_sees_the_systems_packages_only_for_jetson(
    extras: str, system_site: bool, requested: str | None, tmp_path: Path
) -> None:
    returncode, log, stderr = venv_run(tmp_path, extras)
    assert returncode == 0, stderr
    (created,) = [shlex.split(line) for line in log if line.startswith("python3 -m venv ")]
    assert ("--system-site-packages" in created) == system_site
    assert created[-1] == f"{tmp_path}/opt/edgesight/venv"
    (install,) = [
        shlex.split(line) for line in log if line.startswith("venv-python -m pip install") and "/wheels" in line
    ]
    assert "--ignore-installed" in install  # the venv holds every requirement, not Ubuntu's older copies
    assert [a for a in install if a.startswith("edgesight[")] == ([requested] if requested else [])
    assert not [line for line in log if line.split()[0] in ("pip", "pip3", "python")], log


def test_a_jetson_image_without_jetpacks_tensorrt_fails_to_build(tmp_path: Path) -> None:
    returncode, log, _ = venv_run(tmp_path, "jetson", tensorrt_in_venv=False)
    assert returncode != 0
    assert not any(line.startswith("useradd") for line in log), "the image went on past the missing TensorRT"


def test_the_venv_is_what_every_service_command_runs(tmp_path: Path) -> None:
    """ENTRYPOINT, and `python` in compose's and k3s's commands (through PATH), are the venv's interpreter."""
    _, log, _ = venv_run(tmp_path, "")
    (created,) = [shlex.split(line) for line in log if line.startswith("python3 -m venv ")]
    venv = created[-1].removeprefix(str(tmp_path))
    runtime = dockerfile_stages()[-1]
    (entrypoint,) = [json.loads(text) for keyword, text in runtime if keyword == "ENTRYPOINT"]
    assert entrypoint == [f"{venv}/bin/python", "-m"]
    settings = [shlex.split(text) for keyword, text in runtime if keyword == "ENV"]
    environment = dict(pair.split("=", 1) for pairs in settings for pair in pairs)
    assert environment["PATH"].split(":")[0] == f"{venv}/bin"
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert compose["x-service"]["healthcheck"]["test"][1] == "python"
    (inference,) = [d for d in kustomize(K3S / "overlays" / "jetson") if d["kind"] == "StatefulSet"]
    assert "exec python -m services.inference" in inference["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_the_image_gives_its_user_the_engine_cache_compose_names(tmp_path: Path) -> None:
    """compose keeps engines in the state volume, which Docker fills from the image's /var/lib/edgesight: the
    folder is the image user's, and only theirs."""
    returncode, log, stderr = venv_run(tmp_path, "")
    assert returncode == 0, stderr
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    cache = compose["services"]["inference"]["environment"]["EDGESIGHT_ENGINE_CACHE"]
    assert "state:/var/lib/edgesight" in compose["services"]["inference"]["volumes"]
    assert Path(cache).is_relative_to("/var/lib/edgesight")
    (chown,) = [line.split() for line in log if line.startswith("chown ")]
    assert chown[1] == "edgesight" and f"{tmp_path}{cache}" in chown
    assert stat.S_IMODE(os.stat(f"{tmp_path}{cache}").st_mode) == 0o700


# --- k3s ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jetson_pods() -> dict[str, dict[str, Any]]:
    docs = kustomize(K3S / "overlays" / "jetson")
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")
    }


def test_the_gpu_pods_are_in_the_video_group(jetson_pods: dict[str, dict[str, Any]]) -> None:
    for name in GPU_PODS:
        assert VIDEO_GID in jetson_pods[name]["securityContext"]["supplementalGroups"], name
    cpu = kustomize(K3S / "overlays" / "cpu")
    pods = [d["spec"]["template"]["spec"] for d in cpu if d["kind"] in ("Deployment", "StatefulSet")]
    assert not any("supplementalGroups" in p.get("securityContext", {}) for p in pods)


def test_inference_gets_a_cache_folder_it_owns_before_it_starts(
    jetson_pods: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The node makes a hostPath folder as root and fsGroup does not reach it: an init container, root with only
    CAP_CHOWN and CAP_FOWNER, hands exactly the folder mounted at EDGESIGHT_ENGINE_CACHE to inference's uid."""
    pod = jetson_pods["edgesight-inference"]
    (main,) = pod["containers"]
    uid = pod["securityContext"]["runAsUser"]
    assert uid != 0 and pod["securityContext"]["runAsNonRoot"] is True
    assert main.get("securityContext", {}).get("runAsUser", uid) == uid
    cache = {e["name"]: e.get("value") for e in main["env"]}["EDGESIGHT_ENGINE_CACHE"]
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == cache]
    assert not mount.get("readOnly"), "inference must write its engines"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"  # the node's, surviving the pod
    (init,) = pod["initContainers"]
    assert init["image"] == main["image"]
    assert [m["mountPath"] for m in init["volumeMounts"] if m["name"] == mount["name"]] == [cache]
    assert init["args"] == [str(uid), cache]
    context = init["securityContext"]
    assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    # its script, run as the pod runs it (root with only CHOWN and FOWNER), on a folder as the node makes it,
    # then again at the next start, when the folder is inference's and holds its engines
    folder = tmp_path / "engines"
    folder.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    argv = [*init["command"], *init["args"][:-1], str(folder)]
    as_the_pod = [tool("setpriv"), "--bounding-set=-all,+chown,+fowner", "--inh-caps=-all", *argv]
    for start in ("first", "second"):
        result = subprocess.run(as_the_pod, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, f"{start} start: {result.stderr}"
        assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (uid, 0o700)
        engine = folder / "abc.engine"
        engine.write_bytes(b"engine")
        os.chown(engine, uid, uid)
        engine.chmod(0o600)


def test_the_overlay_names_the_jetson_build(jetson_pods: dict[str, dict[str, Any]]) -> None:
    header = (K3S / "overlays" / "jetson" / "kustomization.yaml").read_text()
    assert f"--build-arg BASE_IMAGE={JETPACK_IMAGE}" in header and "--build-arg EXTRAS=jetson" in header
    assert {c["image"] for p in jetson_pods.values() for c in p["containers"]} == {"edgesight:jetson"}


# --- compose -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jetson_compose() -> dict[str, Any]:
    command = [tool("docker-compose"), "-f", str(COMPOSE / "docker-compose.yml"), "-f", str(JETSON_COMPOSE), "config"]
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "test-only"}
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stderr
    merged: dict[str, Any] = yaml.safe_load(result.stdout)
    return merged


def test_compose_on_a_jetson_builds_one_jetpack_image_for_every_service(jetson_compose: dict[str, Any]) -> None:
    ours = {n: s for n, s in jetson_compose["services"].items() if s.get("build", {}).get("dockerfile")}
    assert set(ours) == set(yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]) - {
        "mosquitto",
        "prometheus",
        "grafana",
    }
    assert {s["image"] for s in ours.values()} == {"edgesight:jetson"}
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for service in ours.values():
        assert service["build"]["args"] == {"BASE_IMAGE": JETPACK_IMAGE, "EXTRAS": "jetson"}
    assert "jetson" in extras


def test_compose_gives_the_gpu_services_the_nvidia_runtime_and_the_video_group(jetson_compose: dict[str, Any]) -> None:
    for name, service in jetson_compose["services"].items():
        gpu = name in GPU_SERVICES
        assert (service.get("runtime") == "nvidia") == gpu, name
        assert (str(VIDEO_GID) in service.get("group_add", [])) == gpu, name
    inference = jetson_compose["services"]["inference"]
    cache = inference["environment"]["EDGESIGHT_ENGINE_CACHE"]
    assert any(
        v.split(":")[:2] == ["state", "/var/lib/edgesight"] and not v.endswith(":ro") for v in inference["volumes"]
    )
    assert Path(cache).is_relative_to("/var/lib/edgesight")


def node_path(pod: dict[str, Any], container_path: str) -> str:
    """Where a container path of a pod's first container lives on the node (through a hostPath mount)."""
    [container] = pod["containers"][:1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in sorted(container["volumeMounts"], key=lambda m: -len(m["mountPath"])):
        inside = Path(container_path)
        if inside.is_relative_to(mount["mountPath"]) and not mount.get("readOnly"):
            host = volumes[mount["name"]]["hostPath"]["path"]
            return (Path(host) / inside.relative_to(mount["mountPath"])).as_posix()
    raise AssertionError(f"{container_path} is on no writable hostPath mount")


def test_an_apps_model_on_tensorrt_has_an_engine_cache_of_its_own(
    jetson_pods: dict[str, dict[str, Any]], jetson_compose: dict[str, Any]
) -> None:
    """The apps container runs as root: its engines must not land in inference's folder (root-owned files
    there would be unreadable to uid 10001), and its cache must be on a volume that outlives the pod."""
    caches = {}
    for name in ("edgesight-apps", "edgesight-inference"):
        pod = jetson_pods[name]
        env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
        caches[name] = node_path(pod, env["EDGESIGHT_ENGINE_CACHE"])
    assert caches == {
        "edgesight-apps": "/var/lib/edgesight/apps/engines",
        "edgesight-inference": "/var/lib/edgesight/engines",
    }
    composed = jetson_compose["services"]
    for name in ("inference", "apps"):  # on a volume of its own: no other container can plant an engine there
        cache = composed[name]["environment"]["EDGESIGHT_ENGINE_CACHE"]
        [volume] = [v.split(":")[0] for v in composed[name]["volumes"] if v.split(":")[1] == cache]
        users = [
            other
            for other, service in composed.items()
            if any(v.startswith(f"{volume}:") for v in service.get("volumes", []))
        ]
        assert users == [name], (name, volume, users)
