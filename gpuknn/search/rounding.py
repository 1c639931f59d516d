"""How far exact search's float32 ranking can be off, and the rows that this leaves in doubt.

Exact search ranks the base by a float32 surrogate (``|x|^2 - 2 <q, x>`` for L2,
``-<q, x>`` for inner products), keeps a few more candidates than ``k``, recomputes
their scores directly and keeps the best ``k``. A row the surrogate did not keep can
still belong to the true top ``k`` when the rounding error of its surrogate exceeds the
gap between the last kept candidate and the ``k``-th winner: on clustered data far from
the mean (``|x|^2 ~ 1.6e5``, so a float32 step of about 0.016) the gap can be smaller.

:class:`RoundingBound` bounds that error with the standard dot-product bound
``|fl(a.b) - a.b| <= gamma_n sum |a_i b_i|``, ``gamma_n = n u / (1 - n u)`` with
``u = 2**-24``, and Cauchy-Schwarz over the base's largest norm ``R``:

- L2: the surrogate is off by at most ``gamma_(d+2) (R^2 + 2 |q| R)``, and the
  recomputed squared distance ``T`` by at most ``gamma_(d+1) T``;
- inner products: each of the two is off by at most ``gamma_(d+1) |q| R``.

A row is in doubt when an unkept row, whose surrogate is at least the last kept one
``b``, could still beat the ``k``-th winner within those bounds; such rows are searched
again in float64 (:func:`float64_top_k`). Integer data whose sums stay below ``2**24``
is computed exactly in float32: no row is ever in doubt there, and distance ties keep
their order (the smaller row first).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

UNIT_ROUNDOFF = 2.0 ** -24
EXACT_INTEGER_LIMIT = 2.0 ** 24
_BLOCK_ROWS = 1 << 16  # base rows per block of a float64 re-search
# float64 scores held at once by a re-search (64 MiB).
FLOAT64_PASS_ELEMENTS = 1 << 23


def gamma(n: int) -> float:
    """``n u / (1 - n u)``: the relative error bound of a float32 sum of ``n`` products."""
    return n * UNIT_ROUNDOFF / (1.0 - n * UNIT_ROUNDOFF)


@dataclass(frozen=True)
class RoundingBound:
    """What the base contributes to the rounding error of the float32 surrogate.

    Attributes
    ----------
    metric : {"L2", "INNER_PRODUCT", "COSINE"}
    dim : int
    radius : float
        Largest Euclidean norm of a (centred, for L2) base row.
    integer : bool
        Whether every base value is a whole number.
    """

    metric: str
    dim: int
    radius: float
    integer: bool

    @classmethod
    def of_blocks(cls, blocks: Iterable[Any], metric: str, dim: int, *,
                  xp: ModuleType = np) -> RoundingBound:
        """The bound for a base (centred, for L2) given as blocks of rows, each (m, d)
        float32: a pass over the base that holds one block at a time."""
        radius_sq, integer = 0.0, True
        for block in blocks:
            if not len(block):
                continue
            wide = block.astype(xp.float64)
            radius_sq = max(radius_sq, float(xp.einsum("ij,ij->i", wide, wide).max()))
            integer = integer and bool(xp.all(block == xp.round(block)))
        return cls(metric, int(dim), float(np.sqrt(radius_sq)), integer)

    def in_doubt(self, queries: Any, boundary: Any, kth: Any, *, xp: ModuleType = np) -> Any:
        """Rows whose top k could hold a row the surrogate did not keep.

        Parameters
        ----------
        queries : array of shape (n_rows, dim), float32
            As ranked (centred for L2).
        boundary : array of shape (n_rows,)
            The last kept surrogate per row: every unkept row's surrogate is at least this.
        kth : array of shape (n_rows,), float32
            The recomputed score of the k-th winner (squared L2, or the negated inner
            product).

        Returns
        -------
        array of shape (n_rows,), bool
        """
        q64 = queries.astype(xp.float64)
        q_sq = (q64 * q64).sum(axis=1)
        # the surrogate plus this is the score itself: |q - x|^2, or -<q, x>
        lowest = boundary.astype(xp.float64) + (q_sq if self.metric == "L2" else 0.0)
        kth = kth.astype(xp.float64)
        if self._exact(q64, xp=xp):
            return lowest < kth  # exact arithmetic: ties are already in row order
        q_norm, radius = xp.sqrt(q_sq), self.radius
        if self.metric == "L2":
            slack = gamma(self.dim + 2) * (radius * radius + 2 * q_norm * radius)
            return lowest - slack <= kth * (1 + gamma(self.dim + 1))
        return lowest <= kth + 2 * gamma(self.dim + 1) * q_norm * radius

    def _exact(self, q64: Any, *, xp: ModuleType) -> bool:
        """Whether every partial sum of the surrogate is an integer below ``2**24``."""
        if not self.integer or not bool(xp.all(q64 == xp.round(q64))):
            return False
        largest_query = float(xp.abs(q64).max()) if q64.size else 0.0
        largest_base = self.radius  # bounds every coordinate too
        reach = self.dim * (largest_base + largest_query) ** 2
        return reach < EXACT_INTEGER_LIMIT


def float64_top_k(base: Any, center: Any, queries: Any, k: int, metric: str, *,
                  xp: ModuleType = np) -> tuple[Any, Any]:
    """The k best base rows of each query, scored in float64 (ties to the smaller row).

    Parameters
    ----------
    base : array of shape (n_base, dim), float32
        The original (uncentred) base vectors.
    center : array of shape (dim,) or None
        Subtracted from base and queries for L2 (translation-invariant).
    queries : array of shape (n_rows, dim), float32
    k : int
    metric : {"L2", "INNER_PRODUCT", "COSINE"}

    Returns
    -------
    scores : array of shape (n_rows, k), float32
        Squared L2 distances, or negated inner products; best first.
    rows : array of shape (n_rows, k), int64
    """
    rows_per_pass = max(1, FLOAT64_PASS_ELEMENTS // max(base.shape[0], 1))
    scores, rows = [], []
    for start in range(0, queries.shape[0], rows_per_pass):
        best, order = _float64_pass(base, center, queries[start:start + rows_per_pass], k,
                                    metric, xp=xp)
        scores.append(best)
        rows.append(order)
    return xp.concatenate(scores), xp.concatenate(rows)


def _float64_pass(base: Any, center: Any, queries: Any, k: int, metric: str, *,
                  xp: ModuleType) -> tuple[Any, Any]:
    q64 = queries.astype(xp.float64)
    if center is not None:
        q64 -= center.astype(xp.float64)
    scores = xp.empty((q64.shape[0], base.shape[0]), dtype=xp.float64)
    for start in range(0, base.shape[0], _BLOCK_ROWS):
        block = base[start:start + _BLOCK_ROWS].astype(xp.float64)
        if center is not None:
            block -= center.astype(xp.float64)
        part = scores[:, start:start + block.shape[0]]
        if metric == "L2":
            diff_sq = (block * block).sum(axis=1)[None, :] - 2 * (q64 @ block.T)
            part[...] = xp.maximum(diff_sq + (q64 * q64).sum(axis=1)[:, None], 0)
        else:
            part[...] = -(q64 @ block.T)
    order = xp.argsort(scores, axis=1, kind="stable")[:, :k]
    best = xp.take_along_axis(scores, order, axis=1)
    return best.astype(xp.float32), order.astype(xp.int64)
