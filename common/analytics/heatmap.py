"""The heatmap's grid as stored: counts of anchor points per cell, uint32, zlib'd (mostly zeros)."""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

__all__ = ["decode_grid", "encode_grid", "regrid"]

Grid = npt.NDArray[np.uint32]


def encode_grid(grid: Grid) -> bytes:
    """Little-endian uint32, row by row, compressed.

    >>> grid = np.zeros((2, 3), np.uint32); grid[1, 2] = 7
    >>> decode_grid(encode_grid(grid), 2, 3)[1, 2]
    np.uint32(7)
    """
    return zlib.compress(np.ascontiguousarray(grid, "<u4").tobytes(), 6)


def decode_grid(blob: bytes, rows: int, columns: int) -> Grid:
    data = zlib.decompress(blob, bufsize=rows * columns * 4)
    if len(data) != rows * columns * 4:
        raise ValueError(f"a heatmap of {rows}x{columns} needs {rows * columns * 4} bytes, got {len(data)}")
    return np.frombuffer(data, "<u4").reshape(rows, columns).astype(np.uint32)


def regrid(grid: Grid, rows: int, columns: int) -> Grid:
    """``grid`` on another grid (``analytics.heatmap`` changed): each cell's count goes to the new cell
    holding its centre, so totals stay.

    >>> regrid(np.ones((2, 4), np.uint32), 1, 2).tolist()
    [[4, 4]]
    """
    if grid.shape == (rows, columns):
        return grid
    old_rows, old_columns = grid.shape
    row_of = ((np.arange(old_rows) + 0.5) * rows / old_rows).astype(np.intp)
    column_of = ((np.arange(old_columns) + 0.5) * columns / old_columns).astype(np.intp)
    result = np.zeros((rows, columns), np.uint64)
    np.add.at(result, (row_of[:, None], column_of[None, :]), grid)
    return np.minimum(result, np.iinfo(np.uint32).max).astype(np.uint32)
