"""A model found by its reference and opened under the site's trust: the one way in for both services
that run models.

A reference names a signed package (``.espkg``, installed ones first: :func:`model_search_path`),
a manifest (``.yaml``) or a bare model file. A detector (inference, ``edgesight detect``, ``models
package``/``install``) gets a :class:`ModelSpec`: its manifest checked against the model's inputs and
outputs, its labels resolved. An app's model node gets only the model file (:func:`open_model`): what
its tensors mean is the app's business.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from common.assets import find_asset
from common.errors import EdgeSightError, ModelError, PackageError
from common.models.backend import ModelFile
from common.models.labels import resolve_labels
from common.models.manifest import ModelManifest, Shapes, onnx_metadata, read_manifest, suggest_manifest, yolox_anchors
from common.trust.package import MANIFEST, Package
from common.trust.policy import PACKAGE_SUFFIX, TrustPolicy, model_search_path

if TYPE_CHECKING:
    from common.config.site import SiteSection

__all__ = ["ModelSpec", "load_model_spec", "model_file", "open_model", "package_spec"]


class ModelSpec:
    """A manifest resolved against its files: the model path, its digest and its label table."""

    def __init__(
        self,
        manifest: ModelManifest,
        model_path: Path,
        labels: list[str],
        source: str,
        package: Package | None = None,
    ) -> None:
        self.manifest = manifest
        self.seal: bytes | None = None  # what a backend seals derived files with (the site's device key's)
        self.model_path = model_path  # for a package: the package file
        self.labels = labels
        self.source = source  # the manifest file, the .onnx it was suggested from, or the package
        self.package = package
        self.content = package.members[manifest.file] if package is not None else None
        self.digest = hashlib.sha256(self.content or model_path.read_bytes()).hexdigest()

    @property
    def name(self) -> str:
        return self.manifest.name

    def file(self) -> ModelFile:
        """What a backend needs of this model."""
        if self.package is None:
            return ModelFile(self.model_path, self.name, self.digest, self.manifest.input_size, seal=self.seal)
        inside = self.model_path / self.manifest.file  # for messages only: the bytes never touch the disk
        return ModelFile(inside, self.name, self.digest, self.manifest.input_size, self.content, self.seal)


def load_model_spec(
    reference: str | Path,
    asset_paths: tuple[Path, ...] = (),
    trust: TrustPolicy | None = None,
    *,
    allow_unsigned: bool = False,
    what: str = "the model",
) -> ModelSpec:
    """A signed package (.espkg), a manifest (.yaml) or a bare .onnx, found on the search path,
    checked under ``trust`` and against the model.

    Raises ModelError (PackageError for a refused package) naming what does not fit: a missing or
    corrupt file, an input size or class count that differs from the model's shapes.
    """
    trust = trust or TrustPolicy()
    spec = _find_spec(reference, asset_paths, trust, allow_unsigned, what)
    spec.seal = trust.engine_seal
    return spec


def _find_spec(
    reference: str | Path, asset_paths: tuple[Path, ...], trust: TrustPolicy, allow_unsigned: bool, what: str
) -> ModelSpec:
    try:
        path = find_asset(reference, asset_paths)
    except EdgeSightError as exc:
        raise ModelError(str(exc)) from None
    if path.suffix == PACKAGE_SUFFIX:
        return package_spec(trust.open(path), path)
    trust.check_plain(path, allow_unsigned=allow_unsigned, what=what)
    if path.suffix in (".yaml", ".yml", ".json"):
        manifest = read_manifest(path)
        model_path = path.parent / manifest.file
        if not model_path.is_file():
            raise ModelError(f"{path}: file {manifest.file!r} does not exist beside the manifest")
    else:
        model_path = path
        manifest = suggest_manifest(path)
    if model_path.suffix == ".engine":  # a serialized TensorRT engine: nothing to inspect without TensorRT
        return ModelSpec(manifest, model_path, resolve_labels(manifest, path.parent, {}, None), str(path))
    inputs, outputs, metadata = onnx_metadata(model_path)
    _check_input(manifest, inputs, path)
    classes = _class_count(manifest, outputs, path)
    return ModelSpec(manifest, model_path, resolve_labels(manifest, path.parent, metadata, classes), str(path))


def package_spec(package: Package, path: Path) -> ModelSpec:
    """A package's manifest checked against its own model bytes, as for files on disk: what the
    inference service loads, and what ``models install`` checks before a package becomes current."""
    manifest = read_manifest(path / MANIFEST, package.manifest)
    if (manifest.name, manifest.version) != (package.name, package.version):
        raise ModelError(
            f"{path}: the manifest says {manifest.name} {manifest.version}, the signed index {package.name} "
            f"{package.version}"
        )
    if manifest.file not in package.members:
        raise ModelError(f"{path}: the manifest's file {manifest.file!r} is not in the package")
    content = package.members[manifest.file]
    if manifest.file.endswith(".engine"):
        return ModelSpec(manifest, path, resolve_labels(manifest, path, {}, None, package.members), str(path), package)
    inputs, outputs, metadata = onnx_metadata(path / manifest.file, content)
    _check_input(manifest, inputs, path)
    classes = _class_count(manifest, outputs, path)
    labels = resolve_labels(manifest, path, metadata, classes, package.members)
    return ModelSpec(manifest, path, labels, str(path), package)


def _check_input(manifest: ModelManifest, inputs: Shapes, path: Path) -> None:
    if not inputs or len(inputs[0][1]) != 4:
        found = f"{inputs[0][0]} {inputs[0][1]}" if inputs else "none"
        raise ModelError(f"{path}: a detector takes one image input [batch, channels, height, width] (found: {found})")
    shape = inputs[0][1]
    static = isinstance(shape[2], int) and isinstance(shape[3], int)
    if manifest.input_size is not None and static and (shape[3], shape[2]) != tuple(manifest.input_size):
        raise ModelError(
            f"{path}: input_size {list(manifest.input_size)} (width, height) does not match the model's input "
            f"{inputs[0][0]} {shape}"
        )
    if manifest.input_size is None and not static:
        raise ModelError(f"{path}: the model's input {shape} has a dynamic size; set input_size in the manifest")


def _class_count(manifest: ModelManifest, outputs: Shapes, path: Path) -> int | None:
    shape = outputs[0][1]
    if manifest.decoder == "end2end":
        if len(outputs) < 3:
            raise ModelError(f"{path}: decoder end2end needs boxes, scores and classes outputs, found {outputs}")
        return None
    if len(shape) != 3:
        raise ModelError(f"{path}: decoder {manifest.decoder} needs a 3-dimensional output, found {outputs}")
    if manifest.decoder == "yolox":
        size = manifest.input_size or (int(shape[1]), 0)
        if isinstance(shape[1], int) and manifest.input_size and shape[1] != yolox_anchors(manifest.input_size):
            raise ModelError(
                f"{path}: decoder yolox expects {yolox_anchors(manifest.input_size)} anchors for input {list(size)}, "
                f"the model outputs {shape}"
            )
        return int(shape[2]) - 5 if isinstance(shape[2], int) else None
    channels, anchors = shape[1], shape[2]
    if not isinstance(channels, int) or channels <= 4 or (isinstance(anchors, int) and anchors < channels):
        raise ModelError(f"{path}: decoder yolov8 expects [batch, 4 + classes, anchors], the model outputs {shape}")
    return channels - 4


def open_model(
    reference: str, site: SiteSection, policy: TrustPolicy, *, allow_unsigned: bool, what: str
) -> tuple[ModelFile, str | None]:
    """The model file an app's model node names — a plain file (where the policy allows it), or the
    file a package's manifest names, handed over in memory — and the package's signer (None: plain)."""
    path = find_asset(reference, model_search_path(site))
    if path.suffix != PACKAGE_SUFFIX:
        policy.check_plain(path, allow_unsigned=allow_unsigned, what=what)
        return ModelFile.at(path, what, seal=policy.engine_seal), None
    package = policy.open(path)
    manifest = read_manifest(path / MANIFEST, package.manifest)
    if manifest.file not in package.members:
        raise PackageError(f"{path}: its manifest names no model file of the package")
    content = package.members[manifest.file]
    digest = hashlib.sha256(content).hexdigest()
    return ModelFile(path / manifest.file, what, digest, None, content, policy.engine_seal), package.signer


def model_file(reference: str, site: SiteSection, policy: TrustPolicy, *, allow_unsigned: bool, what: str) -> ModelFile:
    """:func:`open_model` without the signer."""
    return open_model(reference, site, policy, allow_unsigned=allow_unsigned, what=what)[0]
