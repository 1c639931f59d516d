"""Distance metrics and the result convention shared by every search path.

Results are ``(distances, indices)``, nearest first. What ``distances`` holds:

=============== ===================================== ==================
index_metric    value returned                        nearer is
=============== ===================================== ==================
L2              Euclidean distance (not squared)      smaller
INNER_PRODUCT   inner product ``<q, x>``              larger
COSINE          cosine similarity (vectors are        larger
                L2-normalised, then inner product)
=============== ===================================== ==================

A neighbour that could not be found (only possible for IVF indexes probing too
few lists) has index ``-1`` and distance ``+inf`` for L2, ``-inf`` otherwise.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

METRICS = ("L2", "INNER_PRODUCT", "COSINE")
MISSING_INDEX = -1


def larger_is_nearer(metric: str) -> bool:
    """Whether a larger returned value means a nearer neighbour."""
    return metric != "L2"


def missing_distance(metric: str) -> float:
    """The distance reported for a missing neighbour under ``metric``."""
    return -np.inf if larger_is_nearer(metric) else np.inf


def normalize_rows(X: Any, *, xp: ModuleType = np) -> Any:
    """Scale every row to unit L2 norm; all-zero rows stay zero.

    Parameters
    ----------
    X : array of shape (n_rows, n_features), float32

    Returns
    -------
    array of shape (n_rows, n_features), float32
        A new array.
    """
    norms = xp.sqrt((X * X).sum(axis=1, keepdims=True))
    norms[norms == 0] = 1
    return (X / norms).astype(xp.float32, copy=False)


def squared_norms(X: Any, *, xp: ModuleType = np, block_rows: int = 1 << 16) -> Any:
    """Squared L2 norm of each row of ``X``, a block of rows at a time.

    Parameters
    ----------
    X : array of shape (n, d), float32
    xp : module
        ``numpy`` or ``cupy``, owning ``X``.
    block_rows : int
        Rows per pass: the temporary is one block, not a copy of ``X``.

    Returns
    -------
    array of shape (n,), float32
        The same values, row for row, as ``(X * X).sum(axis=1)``.
    """
    norms = xp.empty(X.shape[0], dtype=X.dtype)
    for start in range(0, X.shape[0], block_rows):
        block = X[start:start + block_rows]
        norms[start:start + len(block)] = (block * block).sum(axis=1)
    return norms


def from_scores(scores: Any, metric: str, *, xp: ModuleType = np) -> Any:
    """Ranking scores, turned in place into the returned convention.

    Every search ranks by one score where smaller is nearer: the squared Euclidean
    distance for L2, the negated inner product otherwise, ``+inf`` for a missing
    neighbour. Shards are merged on these scores (square roots of two distinct squared
    distances may round to one value, which would reorder ties); this turns them into
    what the module's table says is returned.

    Parameters
    ----------
    scores : array of shape (n_queries, k), float32
        Overwritten.
    metric : {"L2", "INNER_PRODUCT", "COSINE"}

    Returns
    -------
    array of shape (n_queries, k), float32
        ``scores`` itself, converted.
    """
    if metric == "L2":
        xp.maximum(scores, 0, out=scores)
        return xp.sqrt(scores, out=scores)
    return xp.negative(scores, out=scores)
