"""Synthetic data sets made on the fly from a seed (nothing is downloaded).

``covtype_like``
    Rows shaped like UCI Covertype (10 integer columns in its ranges, a one-hot of 4
    wilderness areas and one of 40 soil types; 7 classes with covtype's shares), drawn
    around 2,000 "patches" so that near rows share a class, as neighbouring forest cells
    do. The training benchmark's docstring (:mod:`gpuknn.benchmark.train_covtype`)
    describes it in full.
``sift_like``
    128-d rows shaped like SIFT descriptors: non-negative integers up to 255, drawn
    around 1,000 cluster centres (unlabelled; ANN benchmarks' classic shape).
``clustered``
    Small Gaussian blobs with labels, for quick runs.
``gaussian``
    ``N(0, 1)`` rows and labels 0-9 of one dtype (the data layer's read benchmark).
``gaussian_mixture``
    Base and query rows of a 128-d mixture whose classes overlap (the CPU comparison).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

SEED = 20240607
# The seed the comparison benchmarks' Gaussian sets have been drawn from since they began.
GAUSSIAN_SEED = 20240601
N_CLASSES = 7
# covtype's 10 quantitative columns and their ranges in the UCI file
COLUMNS = ["Elevation", "Aspect", "Slope", "Horizontal_Distance_To_Hydrology",
           "Vertical_Distance_To_Hydrology", "Horizontal_Distance_To_Roadways",
           "Hillshade_9am", "Hillshade_Noon", "Hillshade_3pm",
           "Horizontal_Distance_To_Fire_Points"]
RANGES = np.array([(1859, 3858), (0, 360), (0, 66), (0, 1397), (-173, 601), (0, 7117),
                   (0, 254), (0, 254), (0, 254), (0, 7173)], dtype=np.float64)
CLASS_SHARES = np.array([0.365, 0.488, 0.062, 0.005, 0.016, 0.030, 0.035])
CLASS_MEANS = np.array([  # one row per class, columns as COLUMNS
    [3130, 156, 13, 270, 42, 2610, 211, 223, 144, 2010],
    [2920, 152, 14, 280, 46, 2430, 214, 225, 143, 2170],
    [2395, 176, 21, 210, 62, 940, 202, 216, 140, 910],
    [2225, 137, 18, 230, 38, 910, 228, 217, 111, 860],
    [2790, 139, 17, 210, 51, 1350, 223, 219, 121, 1580],
    [2420, 180, 19, 160, 45, 1040, 193, 210, 148, 1060],
    [3360, 153, 14, 356, 70, 2740, 217, 222, 135, 2070]], dtype=np.float64)
PATCH_SPREAD = np.array([150, 110, 7, 200, 55, 1400, 25, 18, 35, 1300], dtype=np.float64)
ROW_SPREAD = 0.03  # of each column's range
N_PATCHES = 2000
KEEP_WILDERNESS, KEEP_SOIL = 0.9, 0.8


def _draw(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One category per row of ``probabilities`` (rows sum to 1)."""
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative[:, -1] = 1.0
    return (rng.random((len(probabilities), 1)) < cumulative).argmax(axis=1)


def covtype_like(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Covtype-shaped float64 rows (n, 54) and float64 labels 0-6 (see the module doc)."""
    rng = np.random.default_rng(seed)
    per_class = np.maximum(np.round(CLASS_SHARES * N_PATCHES).astype(int), 10)
    patch_class = np.repeat(np.arange(N_CLASSES), per_class)
    centres = (CLASS_MEANS[patch_class]
               + PATCH_SPREAD * rng.standard_normal((len(patch_class), len(COLUMNS))))
    wilderness_p = rng.dirichlet(np.full(4, 0.6), N_CLASSES)
    soil_p = rng.dirichlet(np.full(40, 0.15), N_CLASSES)
    patch_wilderness = _draw(rng, wilderness_p[patch_class])
    patch_soil = _draw(rng, soil_p[patch_class])
    weights = CLASS_SHARES[patch_class] / per_class[patch_class]
    patch = rng.choice(len(patch_class), n, p=weights / weights.sum())
    y = patch_class[patch]
    low, high = RANGES[:, 0], RANGES[:, 1]
    quantitative = centres[patch] + (ROW_SPREAD * (high - low)
                                     * rng.standard_normal((n, len(COLUMNS))))
    X = np.zeros((n, 54))
    X[:, :10] = np.clip(np.rint(quantitative), low, high)
    wilderness = np.where(rng.random(n) < KEEP_WILDERNESS, patch_wilderness[patch],
                          _draw(rng, wilderness_p[y]))
    soil = np.where(rng.random(n) < KEEP_SOIL, patch_soil[patch], _draw(rng, soil_p[y]))
    rows = np.arange(n)
    X[rows, 10 + wilderness] = 1.0
    X[rows, 14 + soil] = 1.0
    return X, y.astype(np.float64)


def sift_like(n: int, seed: int = SEED, n_centres: int = 1000) -> np.ndarray:
    """(n, 128) float32 rows: non-negative integers up to 255 around random centres."""
    rng = np.random.default_rng([seed, 128])
    centres = rng.gamma(0.6, 30.0, size=(n_centres, 128))
    which = rng.integers(0, n_centres, n)
    rows = np.empty((n, 128), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        part = slice(start, start + (1 << 16))
        noisy = centres[which[part]] + rng.normal(0.0, 12.0, (len(which[part]), 128))
        rows[part] = np.clip(np.rint(noisy), 0, 255)
    return rows


def clustered(n: int, dim: int, n_classes: int, seed: int = SEED) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """(n, dim) float32 rows around ``4 * n_classes`` centres, and their class labels."""
    rng = np.random.default_rng([seed, dim])
    centres = rng.standard_normal((4 * n_classes, dim)) * 4.0
    which = rng.integers(0, len(centres), n)
    X = (centres[which] + rng.standard_normal((n, dim))).astype(np.float32)
    return X, (which % n_classes).astype(np.float32)


def gaussian(n: int, dim: int, dtype: DTypeLike = np.float32,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``N(0, 1)`` rows and uniform labels 0-9, both of one dtype.

    Parameters
    ----------
    n, dim : int
        Rows and columns.
    dtype : dtype
        Of the rows and of the labels (float32 or float64, say).
    seed : int
        Picks the set; the generator is seeded with ``[GAUSSIAN_SEED, seed]``.

    Returns
    -------
    X : ndarray of shape (n, dim)
    y : ndarray of shape (n,)
        Integers 0-9 stored as ``dtype``.
    """
    rng = np.random.default_rng([GAUSSIAN_SEED, seed])
    return rng.standard_normal((n, dim)).astype(dtype), rng.integers(0, 10, n).astype(dtype)


def gaussian_mixture(n_base: int, n_queries: int, *, dim: int = 128, n_clusters: int = 100,
                     n_labels: int = 10, center_scale: float = 0.4, seed: int = GAUSSIAN_SEED,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded Gaussian mixture: base rows, base labels, query rows, query labels.

    ``n_clusters`` centres are drawn from ``N(0, center_scale**2 I_dim)``; every row picks a
    centre uniformly and adds ``N(0, I_dim)`` noise; its label is the centre's number modulo
    ``n_labels``. Queries come from the same distribution and are not in the base. With the
    defaults (128-d, 100 clusters, scale 0.4) centres are about as far apart as two noisy
    rows of one cluster, so classes overlap: exact 10-NN voting scores about 0.78 and 1-NN
    about 0.55 (chance is 0.1), neither trivially separable nor pure noise.

    Parameters
    ----------
    n_base, n_queries : int
        Rows of the base and of the queries.
    dim, n_clusters, n_labels : int
        Columns, mixture components and distinct labels.
    center_scale : float
        Standard deviation of the centres (the noise's is 1).
    seed : int
        Seed of the generator.

    Returns
    -------
    X, y, Q, y_q : ndarray
        Base rows (n_base, dim) and labels (n_base,), query rows (n_queries, dim) and
        labels (n_queries,); all float32.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)) * center_scale
    assign = rng.integers(0, n_clusters, size=n_base + n_queries)
    rows = (centers[assign] + rng.standard_normal((n_base + n_queries, dim))).astype(np.float32)
    labels = (assign % n_labels).astype(np.float32)
    return rows[:n_base], labels[:n_base], rows[n_base:], labels[n_base:]
