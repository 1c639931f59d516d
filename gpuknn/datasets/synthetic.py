"""Synthetic data sets made on the fly from a seed (nothing is downloaded).

``covtype_like``
    Rows shaped like UCI Covertype (10 integer columns in its ranges, a one-hot of 4
    wilderness areas and one of 40 soil types; 7 classes with covtype's shares), drawn
    around 2,000 "patches" so that near rows share a class, as neighbouring forest cells
    do. The training benchmark's docstring (``bench/train_covtype.py``) describes it in
    full.
``sift_like``
    128-d rows shaped like SIFT descriptors: non-negative integers up to 255, drawn
    around 1,000 cluster centres (unlabelled; ANN benchmarks' classic shape).
``clustered``
    Small Gaussian blobs with labels, for quick runs.
"""

from __future__ import annotations

import numpy as np

SEED = 20240607
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
