"""Turn neighbour labels into predictions: majority vote or mean.

These are the numpy twins of the GPU ``vote`` and ``mean`` kernels
(:mod:`gpuknn.kernels`): with ``xp`` numpy they are the CPU path, and with cupy the
kernels run instead. Missing neighbours (index ``-1``) are left out of the vote and
the mean.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from gpuknn import kernels


def vote_counts(neighbour_classes: Any, n_classes: int, *, xp: ModuleType = np) -> Any:
    """Count the neighbours of each class.

    Parameters
    ----------
    neighbour_classes : array of shape (n_queries, k), int
        Class index (into the sorted classes) of every neighbour, ``-1`` if missing.
    n_classes : int

    Returns
    -------
    array of shape (n_queries, n_classes), int64
    """
    if xp is not np and n_classes <= kernels.MAX_VOTE_CLASSES:
        return kernels.vote(neighbour_classes, n_classes, xp=xp)[0]
    n_queries = neighbour_classes.shape[0]
    valid = neighbour_classes >= 0
    rows = xp.broadcast_to(xp.arange(n_queries, dtype=xp.int64)[:, None], neighbour_classes.shape)
    flat = rows[valid] * n_classes + neighbour_classes[valid]
    if flat.size == 0:  # cupy.bincount takes the max of its input, which fails when empty
        return xp.zeros((n_queries, n_classes), dtype=xp.int64)
    counts = xp.bincount(flat, minlength=n_queries * n_classes)
    return counts.reshape(n_queries, n_classes)


def majority(counts: Any, *, xp: ModuleType = np) -> Any:
    """Index of the most frequent class per row; ties go to the smallest class.

    Parameters
    ----------
    counts : array of shape (n_queries, n_classes)

    Returns
    -------
    array of shape (n_queries,), int64
    """
    return xp.argmax(counts, axis=1)


def vote_shares(counts: Any, *, xp: ModuleType = np) -> Any:
    """Fraction of the (found) neighbours in each class.

    Returns
    -------
    array of shape (n_queries, n_classes), float32
        Rows sum to 1 (a row without neighbours is all zero).
    """
    totals = counts.sum(axis=1, keepdims=True)
    return (counts / xp.maximum(totals, 1)).astype(xp.float32)


def mean_labels(neighbour_labels: Any, found: Any, *, xp: ModuleType = np) -> Any:
    """Mean label of the found neighbours of every query.

    Parameters
    ----------
    neighbour_labels : array of shape (n_queries, k), float32
    found : array of shape (n_queries, k), bool
        False where a neighbour is missing.

    Returns
    -------
    array of shape (n_queries,), float32
        NaN for a query without any neighbour.
    """
    if xp is not np:
        return kernels.mean(neighbour_labels, found, xp=xp)
    totals = xp.where(found, neighbour_labels.astype(xp.float64), 0.0).sum(axis=1)
    counts = found.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (totals / counts).astype(xp.float32)
