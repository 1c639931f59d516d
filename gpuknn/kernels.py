"""The CUDA kernels of ``kernels/*.cu``, compiled through CuPy on first use per device.

Every kernel has a numpy twin, which is the CPU path and the reference the GPU tests
compare it with:

=============  ===========================================================
kernel         numpy twin
=============  ===========================================================
``vote``       :func:`gpuknn.model.predict.vote_counts` and :func:`~gpuknn.model.predict.majority`
``mean``       :func:`gpuknn.model.predict.mean_labels`
``fjlt``       :meth:`gpuknn.model.reduction.FJLT.transform`
``select_k``   :func:`gpuknn.search.topk.select_k`
=============  ===========================================================

This module never imports CuPy: callers pass the array module (``xp``) they got from
:mod:`gpuknn._backend`. The sources are found beside the package in a source checkout
(``kernels/``) or under ``<prefix>/share/gpuknn/kernels`` in an installed one.
"""

from __future__ import annotations

import functools
import site
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

# Shared memory a launch may ask for without opting in to more (48 KiB on every card).
SHARED_BYTES = 48 * 1024
VOTE_THREADS = 256
# Classes whose counters fit in shared memory beside the vote's reduction scratch.
MAX_VOTE_CLASSES = (SHARED_BYTES - 2 * 4 * VOTE_THREADS) // 4
MEAN_WARPS_PER_BLOCK = 8
# Widest padded row (floats) that the fused FJLT holds in shared memory.
MAX_FJLT_DIM = 8192
# select_k.cu: GPUKNN_MAX_K and GPUKNN_THREADS.
MAX_SELECT_K = 2048
SELECT_THREADS = 256
# What CuPy's RawModule passes to NVRTC besides the architecture (the tests compile alike).
NVRTC_OPTIONS = ("--std=c++14",)


def source_dirs() -> list[Path]:
    """Where ``*.cu`` files are looked for, in order."""
    return [Path(__file__).resolve().parent.parent / "kernels",
            Path(sys.prefix) / "share" / "gpuknn" / "kernels",
            Path(site.getuserbase()) / "share" / "gpuknn" / "kernels"]  # pip install --user


def source(name: str) -> str:
    """The text of ``kernels/<name>.cu``.

    Raises
    ------
    FileNotFoundError
        When neither source location holds it.
    """
    for directory in source_dirs():
        path = directory / f"{name}.cu"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"{name}.cu not found in {', '.join(map(str, source_dirs()))}")


@functools.cache
def _function(xp: ModuleType, name: str, device: int) -> Any:
    """``gpuknn_<name>`` compiled for ``device`` (NVRTC; CuPy also caches it on disk)."""
    module = xp.RawModule(code=source(name), options=NVRTC_OPTIONS)
    return module.get_function(f"gpuknn_{name}")


def _kernel(xp: ModuleType, name: str) -> Any:
    return _function(xp, name, xp.cuda.Device().id)


def vote(neighbour_classes: Any, n_classes: int, *, xp: ModuleType) -> tuple[Any, Any]:
    """Vote counts and majority class of every query, on the GPU.

    Parameters
    ----------
    neighbour_classes : cupy array of shape (n_queries, k), int
        Class index of every neighbour, ``-1`` if missing.
    n_classes : int
        At most :data:`MAX_VOTE_CLASSES`.

    Returns
    -------
    counts : cupy array of shape (n_queries, n_classes), int64
    majority : cupy array of shape (n_queries,), int64
        Ties go to the smallest class index.
    """
    if not 1 <= n_classes <= MAX_VOTE_CLASSES:
        raise ValueError(f"the vote kernel takes 1 to {MAX_VOTE_CLASSES} classes; got {n_classes}")
    classes = xp.ascontiguousarray(neighbour_classes, dtype=xp.int64)
    n_queries, k = classes.shape
    counts = xp.empty((n_queries, n_classes), dtype=xp.int64)
    majority = xp.empty(n_queries, dtype=xp.int64)
    if n_queries:
        shared = 4 * (n_classes + 2 * VOTE_THREADS)
        _kernel(xp, "vote")((n_queries,), (VOTE_THREADS,),
                            (classes, np.int32(n_queries), np.int32(k), np.int32(n_classes),
                             counts, majority), shared_mem=shared)
    return counts, majority


def mean(neighbour_labels: Any, found: Any, *, xp: ModuleType) -> Any:
    """Mean label of the found neighbours of every query, on the GPU.

    Parameters
    ----------
    neighbour_labels : cupy array of shape (n_queries, k), float32
    found : cupy array of shape (n_queries, k), bool

    Returns
    -------
    cupy array of shape (n_queries,), float32
        NaN for a query without any neighbour.
    """
    labels = xp.ascontiguousarray(neighbour_labels, dtype=xp.float32)
    mask = xp.ascontiguousarray(found, dtype=xp.bool_)
    n_queries, k = labels.shape
    out = xp.empty(n_queries, dtype=xp.float32)
    if n_queries:
        threads = 32 * MEAN_WARPS_PER_BLOCK
        blocks = (n_queries + MEAN_WARPS_PER_BLOCK - 1) // MEAN_WARPS_PER_BLOCK
        _kernel(xp, "mean")((blocks,), (threads,),
                            (labels, mask, np.int32(n_queries), np.int32(k), out))
    return out


def fjlt(X: Any, flips: Any, keep: Any, scale: float, *, xp: ModuleType) -> Any:
    """Sign flip, Walsh-Hadamard transform, subsampling and scaling of rows, fused.

    Parameters
    ----------
    X : cupy array of shape (n_rows, input_dim), float32
    flips : cupy array of shape (padded_dim,), float32
        +-1; ``padded_dim`` a power of two, at most :data:`MAX_FJLT_DIM`.
    keep : cupy array of shape (target_dim,), int64
    scale : float

    Returns
    -------
    cupy array of shape (n_rows, target_dim), float32
    """
    X = xp.ascontiguousarray(X, dtype=xp.float32)
    flips = xp.ascontiguousarray(flips, dtype=xp.float32)
    keep = xp.ascontiguousarray(keep, dtype=xp.int64)
    n_rows, input_dim = X.shape
    padded_dim, target_dim = int(flips.shape[0]), int(keep.shape[0])
    if padded_dim & (padded_dim - 1) or not input_dim <= padded_dim <= MAX_FJLT_DIM:
        raise ValueError(f"the fjlt kernel needs a power-of-two padded_dim in [input_dim, "
                         f"{MAX_FJLT_DIM}]; got {padded_dim} for input_dim {input_dim}")
    out = xp.empty((n_rows, target_dim), dtype=xp.float32)
    if n_rows:
        threads = int(min(256, max(32, padded_dim // 2)))
        _kernel(xp, "fjlt")((n_rows,), (threads,),
                            (X, flips, keep, np.int32(n_rows), np.int32(input_dim),
                             np.int32(padded_dim), np.int32(target_dim), np.float32(scale),
                             out), shared_mem=4 * padded_dim)
    return out


def select_k(scores: Any, k: int, *, xp: ModuleType,
             column_offsets: Any = None) -> tuple[Any, Any]:
    """The k smallest scores of every row, smallest first, ties to the smaller column.

    Parameters
    ----------
    scores : cupy array of shape (n_rows, n_cols), float32
        No NaN.
    k : int
        ``1 <= k <= min(n_cols, MAX_SELECT_K)``.
    column_offsets : cupy array of shape (n_cols,), float32, optional
        Added to every row as it is read (the same float32 sums as adding first).

    Returns
    -------
    values : cupy array of shape (n_rows, k), float32
    columns : cupy array of shape (n_rows, k), int64
    """
    scores = xp.ascontiguousarray(scores, dtype=xp.float32)
    n_rows, n_cols = scores.shape
    if not 1 <= k <= min(n_cols, MAX_SELECT_K):
        raise ValueError(f"the select_k kernel takes 1 <= k <= min(n_cols, {MAX_SELECT_K}); "
                         f"got k={k} for {n_cols} columns")
    has_offsets = column_offsets is not None
    offsets = scores  # not read when the kernel is told there are no offsets
    if has_offsets:
        offsets = xp.ascontiguousarray(column_offsets, dtype=xp.float32)
        if offsets.shape != (n_cols,):
            raise ValueError(f"column_offsets has shape {offsets.shape}; expected ({n_cols},)")
    values = xp.empty((n_rows, k), dtype=xp.float32)
    columns = xp.empty((n_rows, k), dtype=xp.int64)
    if n_rows:
        _kernel(xp, "select_k")((n_rows,), (SELECT_THREADS,),
                                (scores, offsets, np.int32(has_offsets), np.int32(n_rows),
                                 np.int32(n_cols), np.int32(k), values, columns))
    return values, columns
