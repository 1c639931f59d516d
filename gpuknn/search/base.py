"""The base vectors of exact search, held once.

Exact L2 search ranks the base by the float32 surrogate ``|x - c|^2 - 2 <q - c, x - c>``,
with ``c`` the base's rounded mean (:mod:`gpuknn.search.exact`). It used to keep the centred,
``-2``-scaled base as a second copy of the vectors. :class:`SearchBase` keeps only the
vectors as they were given (a numpy array, a read-only map of a model file, or a
device array) and makes the scaled rows of one tile or one cluster when a search
needs them, into a small scratch block: the same float32 values, so the same answers.
Where a cluster partition prunes the search, the rows are stored cluster by cluster
(:meth:`SearchBase.in_order`), so that each cluster is one contiguous block.

Besides the vectors it holds what is derived from them once: the centre, every row's
centred squared norm (``n`` float32) and the :class:`~gpuknn.search.rounding.RoundingBound`.
These are stored in a model file (:meth:`SearchBase.to_arrays`), so that loading a
``faiss.Flat`` model reads them instead of passing over the base again.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn._permute import permute_rows
from gpuknn.metrics import squared_norms
from gpuknn.search.rounding import RoundingBound

# Rows per pass of the one-time passes over the base (norms, bound): their temporaries
# are a few blocks, small beside the base (a block of 128-d rows is 4 MiB).
BLOCK_ROWS = 1 << 13


class RowsOfVectors:
    """``ntotal`` and ``dim`` of a search that keeps its base as ``self.vectors``."""

    vectors: Any

    @property
    def ntotal(self) -> int:
        """Number of base vectors."""
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """Dimension of the base vectors."""
        return int(self.vectors.shape[1])


class SearchBase:
    """The base of an exact search: its vectors, centre, centred norms and rounding bound.

    Parameters
    ----------
    vectors : array of shape (n, d), float32
        The base in its own row order, never written to (it may be a read-only view of
        a file). On the device of ``xp``.
    metric : {"L2", "INNER_PRODUCT", "COSINE"}
    xp : module
        ``numpy`` or ``cupy``.
    stored : dict of arrays, optional
        :meth:`to_arrays` of this base, read back from a model file (checked with
        :meth:`check_arrays`); without it, everything is computed from the vectors.
    order : ndarray of shape (n,), int64, optional
        The row each stored row is, when the vectors (and stored norms) are not in their
        rows' order: ``vectors[i]`` is row ``order[i]``.

    Attributes
    ----------
    center : array of shape (d,), float32, or None
        The whole-number centre of an L2 base (rounded mean); None for inner products.
    sq_norms : array of shape (n,), float32, or None
        ``|x - center|^2`` of every stored row, in float32 as the search adds it; None
        for inner products.
    bound : RoundingBound
    order : ndarray of shape (n,), int64, or None
    """

    def __init__(self, vectors: Any, metric: str, *, xp: ModuleType = np,
                 stored: dict[str, np.ndarray] | None = None, order: np.ndarray | None = None):
        self.vectors, self.metric, self.xp, self.order = vectors, metric, xp, order
        if stored is not None:
            self._use(stored)
            return
        # Centring on the (whole-number) mean keeps |x|^2 small, so the float32 surrogate
        # loses less to cancellation; integer data stays exact, and its ties stay ties.
        self.center = xp.round(vectors.mean(axis=0)) if metric == "L2" else None
        self.sq_norms = xp.empty(self.shape[0], dtype=xp.float32) if metric == "L2" else None
        self.bound = RoundingBound.of_blocks(self._centred_blocks(), metric, self.shape[1],
                                             xp=xp)

    def in_order(self, order: np.ndarray, *, in_place: bool = False) -> SearchBase:
        """This base with its rows stored in ``order`` (``vectors[i]`` is row ``order[i]``).

        Parameters
        ----------
        order : ndarray of shape (n,), int64
            A permutation of the rows (of a base in its rows' order).
        in_place : bool
            Reorder these vectors in place (the caller gives them up) rather than copy.
        """
        if self.order is not None:
            raise ValueError("the base is already stored in another order")
        if in_place:
            permute_rows(self.vectors, order)
            vectors = self.vectors
        else:
            vectors = self.vectors[order]
        reordered = SearchBase.__new__(SearchBase)
        reordered.vectors, reordered.metric, reordered.xp = vectors, self.metric, self.xp
        reordered.order, reordered.center, reordered.bound = order, self.center, self.bound
        reordered.sq_norms = None if self.sq_norms is None else self.sq_norms[order]
        return reordered

    @property
    def shape(self) -> tuple[int, int]:
        """(n, d) of the base."""
        return int(self.vectors.shape[0]), int(self.vectors.shape[1])

    def centred(self, rows: Any) -> Any:
        """Rows of the base (a slice or row numbers) less the centre: (m, d) float32.

        For inner products, the rows as they are (a copy).
        """
        block = self.vectors[rows]
        if self.center is None:
            return block.copy() if block.base is not None else block
        return block - self.center

    def scaled(self, rows: Any) -> Any:
        """What a tile's GEMM multiplies the (centred) queries by: ``-2 (x - center)`` for
        L2, ``-x`` for inner products; (m, d) float32, the values the search always used.
        """
        block = self.centred(rows)
        block *= self.xp.float32(-2.0 if self.center is not None else -1.0)
        return block

    def centred_rows(self, rows: Any) -> Any:
        """Rows (any index shape) less the centre, in float64: ``rows.shape + (d,)``."""
        values = self.vectors[rows].astype(self.xp.float64)
        return values if self.center is None else values - self.center.astype(self.xp.float64)

    def _centred_blocks(self) -> Iterator[Any]:
        """The centred base a block at a time, filling ``sq_norms`` on the way: one pass
        over the base gives the norms and the rounding bound."""
        for start in range(0, self.shape[0], BLOCK_ROWS):
            block = self.centred(slice(start, start + BLOCK_ROWS))
            if self.sq_norms is not None:
                self.sq_norms[start:start + len(block)] = squared_norms(block, xp=self.xp)
            yield block

    # -- storing --------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """What a model file stores (host arrays): ``radius`` and ``integer`` (the bound),
        and for L2 ``center`` and ``sq_norms``."""
        from gpuknn._backend import to_host  # noqa: PLC0415 - light, but not needed at import

        arrays = {"radius": np.float64(self.bound.radius),
                  "integer": np.bool_(self.bound.integer)}
        if self.center is not None:
            arrays["center"] = to_host(self.center).astype(np.float32)
            arrays["sq_norms"] = to_host(self.sq_norms).astype(np.float32)
        return arrays

    @staticmethod
    def check_arrays(arrays: dict[str, np.ndarray], n: int, dim: int, metric: str) -> None:
        """Refuse stored arrays that cannot be this base's.

        Raises
        ------
        ValueError
            Naming the array: a finite radius >= 0, a flag for ``integer``, and for L2 a
            finite whole-number centre of ``dim`` values and ``n`` finite norms >= 0.
        """
        radius, integer = np.asarray(arrays["radius"]), np.asarray(arrays["integer"])
        if radius.shape != () or radius.dtype.kind != "f" or not np.isfinite(radius) or \
                radius < 0:
            raise ValueError("radius must be one finite number >= 0")
        if integer.shape != () or integer.dtype.kind != "b":
            raise ValueError("integer must be one true or false value")
        if metric != "L2":
            return
        center, norms = np.asarray(arrays["center"]), np.asarray(arrays["sq_norms"])
        if center.shape != (dim,) or center.dtype != np.float32 or \
                not np.isfinite(center).all() or (center != np.round(center)).any():
            raise ValueError(f"center must be {dim} finite whole float32 numbers")
        if norms.shape != (n,) or norms.dtype != np.float32 or \
                not (np.isfinite(norms) & (norms >= 0)).all():
            raise ValueError(f"sq_norms must be {n} finite float32 numbers >= 0")

    def _use(self, stored: dict[str, np.ndarray]) -> None:
        xp = self.xp
        self.center = self.sq_norms = None
        if self.metric == "L2":
            self.center = xp.asarray(np.asarray(stored["center"], dtype=np.float32))
            self.sq_norms = xp.asarray(np.asarray(stored["sq_norms"], dtype=np.float32))
        self.bound = RoundingBound(self.metric, self.shape[1], float(stored["radius"]),
                                   bool(stored["integer"]))
