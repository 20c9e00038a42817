"""The TensorRT engine cache: one file per engine, written whole, checked when read, built by one process
at a time.

An engine is specific to everything it was built for (the model, its input size, the batch, the TensorRT
version, the GPU), so the file name is a hash of all of them. Replicas take a lock per key, so one builds
and the others wait and load its engine; the file is written to a temporary file, fsynced and renamed, and
carries its own digest, so an engine torn by a power cut is rebuilt, not loaded.

With ``site.device_key`` set, each file is sealed (AES-256-GCM under a key derived from the device key, its
name bound in): an engine planted by another process that can write the folder, or copied from another
device, does not load — the signed model is what runs — and the engine of an encrypted model is no plainer
on disk than the model. Without a device key the folder's permissions (the service user's alone) are what
protect it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.errors import ModelError

__all__ = [
    "CACHED_SUFFIX",
    "CACHE_VARIABLE",
    "STOPPING",
    "TIMING_CACHE_BYTES",
    "EngineCache",
    "TensorRTSetupError",
    "cancel_builds",
    "engine_cache_dir",
    "engine_cache_key",
    "engine_limit",
    "pack",
    "read_regular",
    "unpack",
    "who",
    "write_whole",
]

log = logging.getLogger(__name__)

CACHE_VARIABLE = "EDGESIGHT_ENGINE_CACHE"
# A cached file: this header, the SHA-256 of the plan, the plan as TensorRT serialized it; or, sealed with
# the site's device key, the sealed header, a nonce and the plan encrypted by AES-256-GCM.
CACHE_MAGIC = b"EDGESIGHT-TRT-CACHE 1\n"
SEALED_MAGIC = b"EDGESIGHT-TRT-SEALED 1\n"
DIGEST_BYTES = 32
NONCE_BYTES = 12
CACHED_SUFFIX = ".cached-engine"
# An engine holds the model's weights (FP16: half the ONNX file's) and its kernels: a file far larger than
# that is not one, and is not read (a sparse file of gigabytes would cost its size in memory at every start).
ENGINE_BASE_BYTES = 64 << 20
ENGINE_PER_MODEL_BYTE = 4
TIMING_CACHE_BYTES = 64 << 20
KEEP_ENGINES = 16
# Set when the process stops: a build in progress (minutes) is cancelled, a wait for another's build given up.
STOPPING = threading.Event()
LOCK_WAIT_S = 3600.0  # an Orin Nano's longest builds take tens of minutes
LOCK_SAY_S = 60.0
LOCK_POLL_S = 0.2


class TensorRTSetupError(ModelError):
    """What the machine's operator must fix; running the model elsewhere would only hide it."""


def engine_cache_key(
    model_digest: str,
    input_size: tuple[int, int],
    tensorrt_version: str,
    gpu: str,
    max_batch: int,
    fp16: bool,
) -> str:
    """The file name an engine is cached under: anything that makes an engine unusable changes it."""
    width, height = input_size
    identity = f"{model_digest}|input={width}x{height}|trt={tensorrt_version}|gpu={gpu}|batch={max_batch}|fp16={fp16}"
    # not ".engine": the file is wrapped (digest, or sealed), not a plan trtexec or a manifest could load
    return hashlib.sha256(identity.encode()).hexdigest()[:32] + CACHED_SUFFIX


def engine_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache/edgesight/engines")


def who() -> str:
    """This process's user as permissions see it: a pod's uid and supplementary groups."""
    groups = sorted(set(os.getgroups()) - {os.getgid()})
    return f"uid {os.getuid()} (gid {os.getgid()}; groups {', '.join(map(str, groups)) or 'none'})"


class EngineCache:
    """One engine's file in the cache folder: written whole, checked (and with a seal, authenticated) when
    read; anything else found under its name — torn, tampered, planted, not a regular file — is rebuilt."""

    def __init__(self, folder: Path, key: str, seal: bytes | None = None) -> None:
        self.folder = folder
        self.path = folder / key
        self.lock_path = self.path.with_suffix(".lock")
        self.seal = seal

    def load(self, limit: int) -> bytes | None:
        """The cached plan, or None if there is none or it cannot be trusted (then it is removed: rebuilt).
        ``limit``: the most bytes an engine of this model can take; a larger file is not read."""
        if self.folder.exists() and not os.access(self.folder, os.R_OK | os.X_OK):
            raise TensorRTSetupError(
                f"the TensorRT engine cache {self.folder} cannot be read by {who()}; make the folder this user's "
                f"or set {CACHE_VARIABLE} to a folder it may use"
            )
        try:
            data = read_regular(self.path, limit)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a link, a FIFO, a folder, a file this user cannot read or too large: not its own
            data, why = None, f"not an engine this service wrote ({exc.strerror or exc})"
        else:
            why = "torn or corrupt" if self.seal is None else "torn, tampered with, or sealed by another device key"
        plan = unpack(data, self.seal, self.path.name) if data is not None else None
        if plan is None:
            log.warning(f"cached TensorRT engine is {why}; rebuilding it", extra={"engine": str(self.path)})
            self.drop()
        else:
            with contextlib.suppress(OSError):
                os.utime(self.path)  # used: the last to be pruned
        return plan

    def drop(self) -> None:
        remove(self.path)

    def check_writable(self) -> None:
        """Before a build of minutes, not after it: a folder this user cannot write is refused now."""
        try:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc.strerror or str(exc)) from None
        problem = self.unwritable()
        if problem is not None:
            raise problem

    def unwritable(self) -> TensorRTSetupError | None:
        """What :meth:`check_writable` would raise, found without creating anything: the folder, or the
        nearest folder above it that exists, must let this user write."""
        existing = self.folder
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return self._unwritable(f"{existing} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            return self._unwritable("permission denied" if existing == self.folder else f"{existing} is not writable")
        return None

    def _unwritable(self, why: str) -> TensorRTSetupError:
        return TensorRTSetupError(
            f"the TensorRT engine cache {self.folder} is not writable by {who()}: {why}. An engine takes minutes "
            f"to build and would be built again at every start; make the folder this user's (k3s: the jetson "
            f"overlay's init container does; compose: the engines volume) or set {CACHE_VARIABLE} to a writable folder"
        )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held while one process looks for the engine and builds it: replicas wait for it, then load it.
        A lock held for longer than a build can take (a stuck process) is given up on: ModelError."""
        self.check_writable()
        if self.lock_path.is_symlink() or (self.lock_path.exists() and not self.lock_path.is_file()):
            remove(self.lock_path)  # not a lock this service made
        try:
            lock = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ModelError(f"{self.lock_path}: cannot be used as a lock: {exc.strerror or exc}") from None
        try:
            self._wait(lock)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)

    def _wait(self, lock: int) -> None:
        started = time.monotonic()
        last_said: float | None = None
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            now = time.monotonic()
            if STOPPING.is_set():
                raise ModelError(f"{self.lock_path}: stopped while waiting for another process's build")
            if now - started > LOCK_WAIT_S:
                raise ModelError(
                    f"{self.lock_path}: another process has been building this engine for {LOCK_WAIT_S / 60:.0f} "
                    "minutes; giving up on it (a stuck build: restart the process that holds it)"
                )
            if last_said is None or now - last_said >= LOCK_SAY_S:  # at once, then every minute
                waiting = {"engine": str(self.path), "waited_s": round(now - started)}
                log.info("another process is building this TensorRT engine; waiting for it", extra=waiting)
                last_said = now
            time.sleep(LOCK_POLL_S)

    def store(self, plan: bytes) -> None:
        """Writes the plan whole, then prunes the folder to the ``KEEP_ENGINES`` last used (models and
        versions come and go: their engines would fill a Jetson's eMMC)."""
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_file()):
            remove(self.path)  # a folder or a link planted under its name: os.replace cannot replace a folder
        write_whole(self.path, pack(plan, self.seal, self.path.name))
        engines = sorted(self.folder.glob(f"*{CACHED_SUFFIX}"), key=_last_used, reverse=True)
        for stale in engines[KEEP_ENGINES:]:
            remove(stale)
            remove(stale.with_suffix(".lock"))


def _last_used(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def remove(path: Path) -> None:
    """Whatever is at ``path`` gone (a folder too), never what a link points to."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes, not a link's, a FIFO's (which would block) or a device's (endless)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if status.st_size > limit:
            raise OSError(errno.EFBIG, f"{status.st_size} bytes, more than an engine's {limit}")
        return file.read(limit + 1)


def pack(data: bytes, seal: bytes | None, label: str) -> bytes:
    """``data`` as a cache file holds it: with its SHA-256 (torn files are found), and with a seal also
    encrypted and authenticated under it (planted or copied files are found), its name bound in."""
    if seal is None:
        return CACHE_MAGIC + hashlib.sha256(data).digest() + data
    nonce = os.urandom(NONCE_BYTES)
    return SEALED_MAGIC + nonce + AESGCM(seal).encrypt(nonce, data, label.encode())


def unpack(stored: bytes, seal: bytes | None, label: str) -> bytes | None:
    """What :func:`pack` stored, or None: torn, tampered, unsealed where a seal is expected, or the reverse."""
    view = memoryview(stored)  # slices of a view copy nothing: an engine is tens of megabytes
    if seal is not None:
        if not stored.startswith(SEALED_MAGIC):
            return None
        body = view[len(SEALED_MAGIC) :]
        try:
            return AESGCM(seal).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], label.encode())
        except (InvalidTag, ValueError):
            return None
    head = len(CACHE_MAGIC)
    if not stored.startswith(CACHE_MAGIC) or len(stored) <= head + DIGEST_BYTES:
        return None
    digest, data = view[head : head + DIGEST_BYTES], view[head + DIGEST_BYTES :]
    return bytes(data) if hashlib.sha256(data).digest() == digest else None


def write_whole(path: Path, data: bytes) -> None:
    """The file appears whole or not at all, and survives a power cut once this returns."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def engine_limit(model_bytes: int) -> int:
    """The most bytes a cached engine of a model of ``model_bytes`` may take."""
    return ENGINE_BASE_BYTES + ENGINE_PER_MODEL_BYTE * model_bytes


def cancel_builds() -> None:
    """At a stop: builds in progress are cancelled and waits for another's build given up, not waited for."""
    STOPPING.set()
