"""The heatmap's grid as stored: counts of anchor points per cell, uint32, zlib'd (mostly zeros)."""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt

from common.analytics.series import CorruptSeries

__all__ = ["GRID_MAX", "GRID_MIN", "MAX_BLOB", "check_grid_size", "decode_grid", "encode_grid", "regrid"]

Grid = npt.NDArray[np.uint32]
GRID_MIN, GRID_MAX = 4, 256  # rows and columns a grid may have: analytics.heatmap's limits (HeatmapConfig)


def _compress_bound(size: int) -> int:
    """The most bytes zlib makes of ``size`` bytes, whatever the level (zlib's ``compressBound``)."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13


MAX_BLOB = _compress_bound(GRID_MAX * GRID_MAX * 4)  # the largest stored grid rules can write


def encode_grid(grid: Grid) -> bytes:
    """Little-endian uint32, row by row, compressed.

    >>> grid = np.zeros((4, 5), np.uint32); grid[1, 2] = 7
    >>> decode_grid(encode_grid(grid), 4, 5)[1, 2]
    np.uint32(7)
    """
    return zlib.compress(np.ascontiguousarray(grid, "<u4").tobytes(), 6)


def check_grid_size(rows: object, columns: object, where: str = "a heatmap") -> tuple[int, int]:
    """``(rows, columns)`` as read from the file, if they are a size rules could have written; else
    :class:`CorruptSeries` (before anything of that size is allocated)."""
    if (
        type(rows) is not int
        or type(columns) is not int
        or not GRID_MIN <= min(rows, columns) <= max(rows, columns) <= GRID_MAX
    ):
        raise CorruptSeries(
            f"{where}: a grid of {str(rows)[:20]} x {str(columns)[:20]}; rows and columns are {GRID_MIN}..{GRID_MAX}"
        )
    return rows, columns


def decode_grid(blob: object, rows: object, columns: object, where: str = "a heatmap") -> Grid:
    """The grid ``encode_grid`` stored. Inflates no more than the grid's own bytes: a size out of the
    config's limits, a blob that inflates to more or less than rows * columns * 4 bytes, that is not zlib
    or that carries more after it, raises :class:`CorruptSeries` (``where`` starts its message)."""
    rows, columns = check_grid_size(rows, columns, where)
    size = rows * columns * 4
    if not isinstance(blob, bytes) or len(blob) > _compress_bound(size):
        # None: the reader's query leaves out a blob longer than any grid's, or not a blob
        length = len(blob) if isinstance(blob, bytes) else "none" if blob is None else type(blob).__name__
        raise CorruptSeries(
            f"{where}: a {rows}x{columns} grid is zlib'd in at most {_compress_bound(size)} bytes, got {length}"
        )
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(blob, size)
        if not inflater.eof:  # at size already, the stream's end (and checksum) may not have been read yet
            extra = inflater.decompress(inflater.unconsumed_tail, 1)
            if extra or not inflater.eof:
                raise CorruptSeries(
                    f"{where}: a {rows}x{columns} grid inflates to more than {size} bytes, or is cut short"
                )
    except zlib.error as exc:
        raise CorruptSeries(f"{where}: not a zlib'd grid ({exc})") from None
    if len(data) != size or inflater.unused_data:
        raise CorruptSeries(
            f"{where}: a {rows}x{columns} grid needs {size} bytes, got {len(data)}"
            + (" and data after it" if inflater.unused_data else "")
        )
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
