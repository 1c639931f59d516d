"""Reorder the rows of a large array in place, with a small temporary.

``array[:] = array[order]`` builds the whole reordered array before it writes it back:
a second copy of a sample that may fill most of memory. :func:`permute_rows` follows
the permutation's cycles instead and moves at most :data:`BLOCK_ROWS` rows at a time.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 1 << 14


def permute_rows(array: np.ndarray, order: np.ndarray, *, block_rows: int = BLOCK_ROWS) -> None:
    """Make row ``i`` of ``array`` its former row ``order[i]``, in place.

    Parameters
    ----------
    array : ndarray of shape (n, ...)
        Written in place; any dtype.
    order : ndarray of shape (n,), int
        A permutation of ``range(n)``.
    block_rows : int
        Rows moved by one assignment: the temporary holds this many rows.

    Raises
    ------
    ValueError
        When ``order`` is not a permutation of the rows.
    """
    n = len(array)
    order = np.asarray(order)
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(f"order must be a permutation of the {n} rows")
    moved = np.flatnonzero(order != np.arange(n))
    seen = np.zeros(n, dtype=bool)
    cycle = np.empty(n, dtype=np.int64)  # 9 bytes a row in all, beside the array's own
    for start in moved.tolist():
        if seen[start]:
            continue
        length = _follow(order, start, cycle)
        seen[cycle[:length]] = True
        _rotate(array, cycle[:length], block_rows)


def _follow(order: np.ndarray, start: int, cycle: np.ndarray) -> int:
    """Write ``start, order[start], order[order[start]], ...`` (until it comes back) into
    ``cycle``; return its length."""
    length, row, follow = 0, start, order.item
    while True:
        cycle[length] = row
        length += 1
        row = follow(row)
        if row == start:
            return length


def _rotate(array: np.ndarray, cycle: np.ndarray, block_rows: int) -> None:
    """``array[cycle[i]] = array[cycle[i + 1]]`` for every i, the last from the first."""
    first = array[cycle[0]].copy()
    last = len(cycle) - 1
    for begin in range(0, last, block_rows):
        end = min(begin + block_rows, last)
        # reads cycle[begin + 1 : end + 1]: rows not yet written (numpy gathers first)
        array[cycle[begin:end]] = array[cycle[begin + 1:end + 1]]
    array[cycle[last]] = first
