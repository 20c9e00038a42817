"""Numeric arrays on the wire: raw little-endian bytes with their dtype and shape.

Lists of floats in msgpack cost ~9 bytes and a Python object per number; raw bytes cost
exactly ``itemsize`` and decode to a zero-copy numpy view.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["ALLOWED_DTYPES", "MAX_ARRAY_BYTES", "MAX_NDIM", "NDArray"]

# Fixed, explicit byte order so a big-endian or non-numpy peer knows exactly what it reads.
ALLOWED_DTYPES = frozenset({"|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<i8", "<f2", "<f4", "<f8"})
# A sender chooses these sizes: bounded so that one message cannot make a receiver allocate without limit.
MAX_NDIM = 4
MAX_ARRAY_BYTES = 16 << 20


class NDArray(msgspec.Struct, frozen=True, gc=False):
    """``{"dtype": "<f4", "shape": [N, 4], "data": <bin>}`` — validated on construction and decode."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    def __post_init__(self) -> None:
        if self.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(ALLOWED_DTYPES)}, got {self.dtype!r}")
        if len(self.shape) > MAX_NDIM or any(dim < 0 for dim in self.shape):
            raise ValueError(f"shape must have at most {MAX_NDIM} non-negative dimensions, got {list(self.shape)[:8]}")
        if len(self.data) > MAX_ARRAY_BYTES:
            raise ValueError(f"array of {len(self.data)} bytes; at most {MAX_ARRAY_BYTES}")
        expected = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        if len(self.data) != expected:
            raise ValueError(
                f"data holds {len(self.data)} bytes, expected {expected} for {self.dtype} {list(self.shape)}"
            )

    @classmethod
    def from_numpy(cls, array: npt.ArrayLike, dtype: str | None = None) -> NDArray:
        """Wrap ``array`` (converted to ``dtype`` if given) for the wire."""
        arr = np.asarray(array, dtype=np.dtype(dtype) if dtype else None)
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        return cls(dtype=arr.dtype.str, shape=tuple(int(d) for d in arr.shape), data=arr.tobytes())

    def to_numpy(self) -> npt.NDArray[np.generic]:
        """A read-only view over ``data``; no copy."""
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)
