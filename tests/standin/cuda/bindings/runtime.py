"""STAND-IN for cuda-python's ``cuda.bindings.runtime`` (cudart), for tests on machines without a GPU. NOT CUDA.

It exists so that EdgeSight's TensorRT backend can run its whole data path in CI, with
``tests/standin/tensorrt`` running the "engine" on ONNX Runtime. It offers only the calls that backend
makes, with cuda-python's names and return conventions: every call returns a tuple whose first item is a
``cudaError_t`` and whose other items are ``None`` when it failed; a wrong argument type raises ``TypeError``.

What it models, because a backend can get each wrong:
- Memory is real (ctypes buffers, 256-byte aligned), so pointers are real addresses. ``cudaMalloc`` memory
  starts as 0xCD bytes, so a copy that never happened shows. Freed memory is kept, overwritten with 0xDD, so a
  use after free reads garbage instead of crashing the test process.
- Pinned host memory (``cudaMallocHost``, ``cudaHostAlloc``) is mapped, as on any 64-bit system with unified
  addressing (a Jetson too): ``cudaHostGetDevicePointer`` gives back the host pointer, and the device may use it.
- A stream is a queue: ``cudaMemcpyAsync`` and TensorRT's ``execute_async_v3`` only enqueue; the work runs at
  ``cudaStreamSynchronize`` (or ``cudaDeviceSynchronize``, ``cudaFree``, ``cudaFreeHost``, which synchronise).
  As in CUDA, a copy from pageable (not pinned) host memory takes its source at once, and a copy to pageable
  memory returns only once done, so only pinned buffers show a missing synchronisation.
- Frees are checked (unknown pointer or double free: ``cudaErrorInvalidValue``), counted and record the thread.

Settings, read at each call (so a subprocess can be set up too): ``EDGESIGHT_STANDIN_DEVICES`` (default 1; 0
behaves like a machine with a driver and no GPU), ``EDGESIGHT_STANDIN_GPU`` (name, default "Orin"),
``EDGESIGHT_STANDIN_SMS`` (multiprocessors, 16), ``EDGESIGHT_STANDIN_INTEGRATED`` (1), ``EDGESIGHT_STANDIN_CC``
(compute capability, "8.7"), ``EDGESIGHT_STANDIN_MEMORY_MIB`` (``totalGlobalMem``, 8192). Tests read
``standin`` (see ``Standin``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

__all__ = [
    "cudaDeviceProp",
    "cudaDeviceSynchronize",
    "cudaDriverGetVersion",
    "cudaError_t",
    "cudaFree",
    "cudaFreeHost",
    "cudaGetDeviceCount",
    "cudaGetDeviceProperties",
    "cudaGetErrorName",
    "cudaGetErrorString",
    "cudaHostAlloc",
    "cudaHostAllocDefault",
    "cudaHostAllocMapped",
    "cudaHostAllocPortable",
    "cudaHostAllocWriteCombined",
    "cudaHostGetDevicePointer",
    "cudaMalloc",
    "cudaMallocHost",
    "cudaMemcpy",
    "cudaMemcpyAsync",
    "cudaMemcpyKind",
    "cudaRuntimeGetVersion",
    "cudaSetDevice",
    "cudaStreamCreate",
    "cudaStreamDestroy",
    "cudaStreamSynchronize",
    "cudaStream_t",
    "standin",
]

CUDA_VERSION = 12060  # what cudaRuntimeGetVersion and cudaDriverGetVersion report: 12.6, as on JetPack 6.1
ALIGNMENT = 256  # cudaMalloc's alignment; TensorRT refuses tensor addresses aligned to less
DEVICE_GARBAGE = 0xCD
FREED_GARBAGE = 0xDD


class cudaError_t(IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalAddress = 700

    def __str__(self) -> str:  # cuda-python prints its errors as their repr
        return repr(self)


_ERROR_STRINGS = {
    0: b"no error",
    1: b"invalid argument",
    2: b"out of memory",
    21: b"invalid copy direction for memcpy",
    100: b"no CUDA-capable device is detected",
    101: b"invalid device ordinal",
    400: b"invalid resource handle",
    700: b"an illegal memory access was encountered",
}


class cudaMemcpyKind(IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


cudaHostAllocDefault = 0
cudaHostAllocPortable = 1
cudaHostAllocMapped = 2
cudaHostAllocWriteCombined = 4

SUCCESS = cudaError_t.cudaSuccess
INVALID_VALUE = cudaError_t.cudaErrorInvalidValue


class cudaStream_t:
    """A stream handle, as cuda-python's: ``int(stream)`` is the handle; 0 is the legacy default stream."""

    def __init__(self, init_value: int = 0) -> None:
        self._handle = ctypes.c_void_p(int(init_value))

    def __int__(self) -> int:
        return self._handle.value or 0

    __index__ = __int__

    def getPtr(self) -> int:
        return ctypes.addressof(self._handle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, cudaStream_t) and int(self) == int(other)

    def __hash__(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"<CUstream {int(self):#x}>"


@dataclass
class cudaDeviceProp:
    name: bytes = b""
    major: int = 0
    minor: int = 0
    multiProcessorCount: int = 0
    totalGlobalMem: int = 0
    integrated: int = 0
    canMapHostMemory: int = 0


@dataclass
class Allocation:
    pointer: int
    size: int
    kind: str  # "device" (cudaMalloc) or "pinned" (cudaMallocHost, cudaHostAlloc)
    flags: int
    thread: int
    buffer: Any = field(repr=False)

    def holds(self, pointer: int, size: int) -> bool:
        return self.pointer <= pointer and pointer + size <= self.pointer + self.size


@dataclass
class Free:
    pointer: int
    kind: str
    thread: int  # threading.get_ident() of the thread that freed it
    allocation: Allocation = field(repr=False)


@dataclass
class _Stream:
    handle: int
    pending: list[Callable[[], cudaError_t | None]] = field(default_factory=list)

    def run(self) -> cudaError_t:
        """Runs the queued work in order, as the device would; the first failure is the stream's error."""
        error = SUCCESS
        while self.pending:
            outcome = self.pending.pop(0)()
            if outcome and error == SUCCESS:
                error = outcome
        if error != SUCCESS:
            standin.sticky_error = error  # an illegal address poisons the context, as in CUDA
        return error


class Standin:
    """What tests can see: live allocations and streams, every free (with its thread), and counts."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        self.allocations: dict[int, Allocation] = {}
        self.frees: list[Free] = []
        self.streams: dict[int, _Stream] = {}
        self.default_stream = _Stream(0)
        self.allocation_count = 0
        self.stream_count = 0
        self.sticky_error = SUCCESS
        self._next_stream = 0x7F00_0000_0000

    def live_allocations(self, kind: str | None = None) -> list[Allocation]:
        with self.lock:
            return [a for a in self.allocations.values() if kind is None or a.kind == kind]

    def live_streams(self) -> list[int]:
        with self.lock:
            return list(self.streams)

    @property
    def free_count(self) -> int:
        return len(self.frees)

    def find(self, pointer: int, size: int) -> Allocation | None:
        with self.lock:
            for allocation in self.allocations.values():
                if allocation.holds(pointer, max(size, 1)):
                    return allocation
            return None


standin = Standin()


def _device_count() -> int:
    return int(os.environ.get("EDGESIGHT_STANDIN_DEVICES", "1"))


def _not_ready() -> cudaError_t | None:
    if _device_count() == 0:
        return cudaError_t.cudaErrorNoDevice
    return standin.sticky_error or None


def _pointer(value: Any) -> int:
    """cuda-python takes None, an int or an object with the buffer protocol wherever it wants a pointer."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if hasattr(value, "__array_interface__"):
        return int(value.__array_interface__["data"][0])
    try:
        return int(np.frombuffer(memoryview(value), dtype=np.uint8).ctypes.data)
    except TypeError:
        raise TypeError(
            f"Provided argument is of type {type(value)} but expected Type None, int or object with Buffer Protocol"
        ) from None


def _stream(value: Any) -> _Stream | None:
    if isinstance(value, str | bytes | float):
        raise TypeError("an integer is required")
    handle = 0 if value is None else int(value)
    return standin.default_stream if handle == 0 else standin.streams.get(handle)


def _allocate(size: int, kind: str, flags: int) -> int:
    if size < 0:
        raise OverflowError("can't convert negative value to size_t")
    buffer = ctypes.create_string_buffer(max(size, 1) + ALIGNMENT)
    pointer = (ctypes.addressof(buffer) + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    if kind == "device":
        ctypes.memset(pointer, DEVICE_GARBAGE, size)
    with standin.lock:
        standin.allocations[pointer] = Allocation(pointer, size, kind, flags, threading.get_ident(), buffer)
        standin.allocation_count += 1
    return pointer


def _free(pointer: Any, kind: str) -> tuple[cudaError_t]:
    address = _pointer(pointer)
    if address == 0:
        return (SUCCESS,)
    cudaDeviceSynchronize()  # cudaFree and cudaFreeHost wait for the device, as CUDA's do
    with standin.lock:
        allocation = standin.allocations.get(address)
        if allocation is None or allocation.kind != kind:
            return (INVALID_VALUE,)  # never allocated, freed already, or freed with the wrong function
        del standin.allocations[address]
        ctypes.memset(address, FREED_GARBAGE, allocation.size)
        standin.frees.append(Free(address, kind, threading.get_ident(), allocation))
    return (SUCCESS,)


def cudaGetErrorString(error: cudaError_t) -> tuple[cudaError_t, bytes]:
    return SUCCESS, _ERROR_STRINGS.get(int(error), b"unrecognized error code")


def cudaGetErrorName(error: cudaError_t) -> tuple[cudaError_t, bytes]:
    return SUCCESS, cudaError_t(int(error)).name.encode()


def cudaRuntimeGetVersion() -> tuple[cudaError_t, int]:
    return SUCCESS, CUDA_VERSION


def cudaDriverGetVersion() -> tuple[cudaError_t, int]:
    return SUCCESS, CUDA_VERSION


def cudaGetDeviceCount() -> tuple[cudaError_t, int | None]:
    count = _device_count()
    return (SUCCESS, count) if count else (cudaError_t.cudaErrorNoDevice, None)


def cudaSetDevice(device: int) -> tuple[cudaError_t]:
    if _device_count() == 0:
        return (cudaError_t.cudaErrorNoDevice,)
    return (SUCCESS if 0 <= int(device) < _device_count() else cudaError_t.cudaErrorInvalidDevice,)


def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, cudaDeviceProp | None]:
    if _device_count() == 0:
        return cudaError_t.cudaErrorNoDevice, None
    if not 0 <= int(device) < _device_count():
        return cudaError_t.cudaErrorInvalidDevice, None
    major, minor = (int(part) for part in os.environ.get("EDGESIGHT_STANDIN_CC", "8.7").split("."))
    return SUCCESS, cudaDeviceProp(
        name=os.environ.get("EDGESIGHT_STANDIN_GPU", "Orin").encode(),
        major=major,
        minor=minor,
        multiProcessorCount=int(os.environ.get("EDGESIGHT_STANDIN_SMS", "16")),
        totalGlobalMem=int(os.environ.get("EDGESIGHT_STANDIN_MEMORY_MIB", "8192")) << 20,
        integrated=int(os.environ.get("EDGESIGHT_STANDIN_INTEGRATED", "1")),
        canMapHostMemory=1,
    )


def cudaMalloc(size: int) -> tuple[cudaError_t, int | None]:
    error = _not_ready()
    return (error, None) if error else (SUCCESS, _allocate(int(size), "device", 0))


def cudaMallocHost(size: int) -> tuple[cudaError_t, int | None]:
    error = _not_ready()
    return (error, None) if error else (SUCCESS, _allocate(int(size), "pinned", cudaHostAllocDefault))


def cudaHostAlloc(size: int, flags: int) -> tuple[cudaError_t, int | None]:
    error = _not_ready() or (INVALID_VALUE if int(flags) & ~0b111 else None)
    return (error, None) if error else (SUCCESS, _allocate(int(size), "pinned", int(flags)))


def cudaHostGetDevicePointer(pHost: Any, flags: int) -> tuple[cudaError_t, int | None]:
    error = _not_ready()
    if error:
        return error, None
    address = _pointer(pHost)
    allocation = standin.find(address, 1)
    if int(flags) != 0 or allocation is None or allocation.kind != "pinned":
        return INVALID_VALUE, None
    return SUCCESS, address  # unified addressing: the device sees pinned memory at its host address


def cudaFree(devPtr: Any) -> tuple[cudaError_t]:
    return _free(devPtr, "device")


def cudaFreeHost(ptr: Any) -> tuple[cudaError_t]:
    return _free(ptr, "pinned")


def cudaStreamCreate() -> tuple[cudaError_t, cudaStream_t | None]:
    error = _not_ready()
    if error:
        return error, None
    with standin.lock:
        standin._next_stream += 0x40
        standin.streams[standin._next_stream] = _Stream(standin._next_stream)
        standin.stream_count += 1
        return SUCCESS, cudaStream_t(standin._next_stream)


def cudaStreamSynchronize(stream: Any) -> tuple[cudaError_t]:
    queue = _stream(stream)
    if queue is None:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    return (queue.run() or standin.sticky_error,)


def cudaStreamDestroy(stream: Any) -> tuple[cudaError_t]:
    queue = _stream(stream)
    if queue is None or queue.handle == 0:
        return (cudaError_t.cudaErrorInvalidResourceHandle,)
    queue.run()  # CUDA lets queued work finish before the stream goes
    with standin.lock:
        del standin.streams[queue.handle]
    return (SUCCESS,)


def cudaDeviceSynchronize() -> tuple[cudaError_t]:
    error = SUCCESS
    for queue in [standin.default_stream, *list(standin.streams.values())]:
        error = queue.run() or error
    return (error or standin.sticky_error,)


def _where(address: int, size: int) -> str | None:
    """ "device", "pinned" (reachable from both sides) or "pageable"; None for a range that leaves its allocation."""
    allocation = standin.find(address, 1)
    if allocation is None:
        return "pageable"
    return allocation.kind if allocation.holds(address, size) else None


_DIRECTIONS = {  # where each kind of copy may read from and write to
    cudaMemcpyKind.cudaMemcpyHostToHost: ({"pinned", "pageable"}, {"pinned", "pageable"}),
    cudaMemcpyKind.cudaMemcpyHostToDevice: ({"pinned", "pageable"}, {"device", "pinned"}),
    cudaMemcpyKind.cudaMemcpyDeviceToHost: ({"device", "pinned"}, {"pinned", "pageable"}),
    cudaMemcpyKind.cudaMemcpyDeviceToDevice: ({"device", "pinned"}, {"device", "pinned"}),
    cudaMemcpyKind.cudaMemcpyDefault: ({"device", "pinned", "pageable"}, {"device", "pinned", "pageable"}),
}


def _move(destination: int, source: int, count: int) -> None:
    ctypes.memmove(destination, source, count)


def _copy(dst: Any, src: Any, count: int, kind: Any, stream: Any, synchronous: bool) -> tuple[cudaError_t]:
    destination, source, count = _pointer(dst), _pointer(src), int(count)
    queue = _stream(stream)
    error = _not_ready() or (None if queue is not None else cudaError_t.cudaErrorInvalidResourceHandle)
    if error:
        return (error,)
    assert queue is not None
    try:
        sources, destinations = _DIRECTIONS[cudaMemcpyKind(int(kind))]
    except ValueError:
        return (cudaError_t.cudaErrorInvalidMemcpyDirection,)
    read_from, write_to = _where(source, count), _where(destination, count)
    if count == 0:
        return (SUCCESS,)
    if read_from not in sources or write_to not in destinations or not source or not destination:
        return (INVALID_VALUE,)
    if read_from == "pageable":  # staged at once: later writes to the source do not reach the copy
        staged = ctypes.create_string_buffer(ctypes.string_at(source, count), count)
        queue.pending.append(lambda: _move(destination, ctypes.addressof(staged), count))
    else:
        queue.pending.append(lambda: _move(destination, source, count))
    if synchronous or write_to == "pageable":  # returns only once the copy is done
        return (cudaDeviceSynchronize()[0] if synchronous else queue.run(),)
    return (SUCCESS,)


def cudaMemcpyAsync(dst: Any, src: Any, count: int, kind: cudaMemcpyKind, stream: Any) -> tuple[cudaError_t]:
    return _copy(dst, src, count, kind, stream, synchronous=False)


def cudaMemcpy(dst: Any, src: Any, count: int, kind: cudaMemcpyKind) -> tuple[cudaError_t]:
    return _copy(dst, src, count, kind, 0, synchronous=True)


def _enqueue(stream: Any, work: Callable[[], cudaError_t | None]) -> cudaError_t:
    """For the TensorRT stand-in: puts an engine's execution on a stream."""
    queue = _stream(stream)
    error = _not_ready() or (None if queue is not None else cudaError_t.cudaErrorInvalidResourceHandle)
    if error:
        return error
    assert queue is not None
    queue.pending.append(work)
    return SUCCESS


def _device_readable(address: int, size: int) -> bool:
    """For the TensorRT stand-in: whether the device may read or write this range (its memory or pinned memory)."""
    return address != 0 and _where(address, size) in {"device", "pinned"}
