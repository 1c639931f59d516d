"""The two data sets the memory harness measures, made from a seed: ``sift-like`` and
``covtype-like`` (:func:`make_dataset`), and their row counts for a full and a quick run.
"""

from __future__ import annotations

import numpy as np

SEED = 20240607
DATASETS = ("sift-like", "covtype-like")
FULL_ROWS = {"sift-like": 1_000_000, "covtype-like": 500_000}
QUICK_ROWS = {"sift-like": 100_000, "covtype-like": 100_000}
SIFT_CLASSES = 10


# -- the data ----------------------------------------------------------------------------------
def make_dataset(name: str, n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Rows and class labels of a data set of :data:`DATASETS`.

    Parameters
    ----------
    name : {"sift-like", "covtype-like"}
        ``sift-like``: :func:`gpuknn.datasets.synthetic.sift_like` rows with
        :data:`SIFT_CLASSES` random classes; ``covtype-like``:
        :func:`gpuknn.datasets.synthetic.covtype_like` rows and their 7 classes.
    n : int
        Rows.

    Returns
    -------
    X : ndarray of shape (n, 128) or (n, 54), float32, C-contiguous
    y : ndarray of shape (n,), float32
    """
    from gpuknn.datasets.synthetic import covtype_like, sift_like  # noqa: PLC0415

    if name == "sift-like":
        labels = np.random.default_rng([seed, 1]).integers(0, SIFT_CLASSES, n)
        return sift_like(n, seed=seed), labels.astype(np.float32)
    if name == "covtype-like":
        X, y = covtype_like(n, seed=seed)
        return np.ascontiguousarray(X, dtype=np.float32), y.astype(np.float32)
    raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
