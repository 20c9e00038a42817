"""The readers a consumer of many cameras' FrameRefs holds: one per segment, opened on first use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.shm.layout import DEFAULT_SHM_DIR
from common.shm.pixels import ChannelOrder
from common.shm.reader import FrameRingReader
from contracts import FrameRef

__all__ = ["FrameReaders"]


class FrameReaders:
    """A reader per segment, opened on first use: what a consumer of many cameras' FrameRefs holds.
    One thread at a time (a reader may remap after its writer restarts)."""

    def __init__(self, shm_dir: Path | str = DEFAULT_SHM_DIR) -> None:
        self.shm_dir = shm_dir
        self._readers: dict[str, FrameRingReader] = {}

    def reader(self, segment: str) -> FrameRingReader:
        reader = self._readers.get(segment)
        if reader is None:
            reader = self._readers[segment] = FrameRingReader(segment, shm_dir=self.shm_dir)
        return reader

    def copy(self, ref: FrameRef, order: ChannelOrder | None = None) -> npt.NDArray[np.uint8]:
        """See :meth:`FrameRingReader.copy`."""
        return self.reader(ref.segment).copy(ref, order)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
