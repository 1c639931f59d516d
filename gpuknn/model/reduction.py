"""Dimension reduction: random-sign projection and the fast Johnson-Lindenstrauss transform.

Both are fitted once at training from the seed, stored in the model as arrays
(not regenerated from the seed, so a model never depends on a random-number
stream staying the same across numpy versions) and applied identically to the
training sample and to every query. Both preserve squared norms in expectation,
hence L2 distances and inner products approximately.

``sign``
    ``y = x R / sqrt(t)`` with ``R`` a ``(d, t)`` matrix of independent random
    signs (Achlioptas, "Database-friendly random projections", JCSS 2003).
``fjlt``
    Randomised Hadamard transform then subsampling (Ailon and Chazelle's FJLT
    with a subsampling projection): pad ``x`` with zeros to ``D = 2**ceil(log2 d)``,
    flip signs by a random diagonal, apply the Walsh-Hadamard transform, keep
    ``t`` random coordinates and scale by ``1 / sqrt(t)``. It costs
    ``O(D log D)`` per row instead of ``O(d t)``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from gpuknn import kernels

ROW_CHUNK = 8192
# Largest FJLT matrix (input_dim x target_dim) materialised for the CPU GEMM path: 256 MB.
DENSE_MAX_ELEMENTS = 1 << 26
_SEED_STREAM = 2  # the sampler uses stream 1 of the same seed


class SignProjection:
    """Dense random +-1 projection scaled by ``1 / sqrt(target_dim)``.

    Parameters
    ----------
    signs : ndarray of shape (input_dim, target_dim), int8
        Entries in {-1, +1}.
    """

    kind = "sign"

    def __init__(self, signs: np.ndarray):
        self.signs = np.asarray(signs, dtype=np.int8)
        self.input_dim, self.target_dim = self.signs.shape
        self._matrices: dict[int, Any] = {}

    @classmethod
    def fit(cls, input_dim: int, target_dim: int, seed: int) -> SignProjection:
        """Draw the projection for ``input_dim -> target_dim`` from ``seed``."""
        rng = np.random.default_rng([seed, _SEED_STREAM])
        signs = rng.integers(0, 2, size=(input_dim, target_dim), dtype=np.int8) * 2 - 1
        return cls(signs.astype(np.int8))

    def apply(self, X: Any, *, xp: ModuleType = np) -> Any:
        """Project rows.

        Parameters
        ----------
        X : array of shape (n_rows, input_dim), float32

        Returns
        -------
        array of shape (n_rows, target_dim), float32
        """
        return xp.matmul(xp.asarray(X, dtype=xp.float32), self._matrix(xp))

    def _matrix(self, xp: ModuleType) -> Any:
        key = id(xp)
        if key not in self._matrices:
            scale = np.float32(1.0 / np.sqrt(self.target_dim))
            self._matrices[key] = xp.asarray(self.signs.astype(np.float32) * scale)
        return self._matrices[key]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays that define this projection, for the model file."""
        return {"signs": self.signs}

    def check(self) -> None:
        """Raise ValueError unless this is a projection :meth:`fit` could have drawn."""
        if self.target_dim < 1 or not np.isin(self.signs, (-1, 1)).all():
            raise ValueError("signs must be a matrix of -1 and +1 with at least one column")

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SignProjection:
        """Inverse of :meth:`to_arrays`."""
        return cls(arrays["signs"])


class FJLT:
    """Randomised Walsh-Hadamard transform followed by coordinate subsampling.

    Parameters
    ----------
    flips : ndarray of shape (padded_dim,), int8
        Random signs applied before the transform.
    keep : ndarray of shape (target_dim,), int64
        Sorted coordinates kept after the transform.
    input_dim : int
        Dimension of the input rows (``<= padded_dim``, a power of two).
    """

    kind = "fjlt"

    def __init__(self, flips: np.ndarray, keep: np.ndarray, input_dim: int):
        self.flips = np.asarray(flips, dtype=np.int8)
        self.keep = np.asarray(keep, dtype=np.int64)
        self.input_dim = int(input_dim)
        self.padded_dim = int(self.flips.shape[0])
        self.target_dim = int(self.keep.shape[0])
        self._dense: np.ndarray | None = None
        self._on_device: dict[int, tuple[Any, Any]] = {}

    @classmethod
    def fit(cls, input_dim: int, target_dim: int, seed: int) -> FJLT:
        """Draw the transform for ``input_dim -> target_dim`` from ``seed``."""
        padded_dim = 1 << max(0, (input_dim - 1).bit_length())
        rng = np.random.default_rng([seed, _SEED_STREAM])
        flips = (rng.integers(0, 2, size=padded_dim, dtype=np.int8) * 2 - 1).astype(np.int8)
        keep = np.sort(rng.choice(padded_dim, size=target_dim, replace=False)).astype(np.int64)
        return cls(flips, keep, input_dim)

    def apply(self, X: Any, *, xp: ModuleType = np) -> Any:
        """Transform rows.

        On the CPU the transform is applied as one GEMM with its ``(input_dim,
        target_dim)`` matrix, which :meth:`transform` itself computes once (numpy's
        butterfly passes cost about 20x more than the GEMM); elsewhere, or when that
        matrix would be too large, through :meth:`transform`.

        Parameters
        ----------
        X : array of shape (n_rows, input_dim), float32

        Returns
        -------
        array of shape (n_rows, target_dim), float32
        """
        X = xp.asarray(X, dtype=xp.float32)
        if xp is np and self.input_dim * self.target_dim <= DENSE_MAX_ELEMENTS:
            if self._dense is None:
                self._dense = self.transform(np.eye(self.input_dim, dtype=np.float32))
            return X @ self._dense
        return self.transform(X, xp=xp)

    def transform(self, X: Any, *, xp: ModuleType = np) -> Any:
        """Sign flip, Walsh-Hadamard transform, subsampling, in chunks of :data:`ROW_CHUNK`.

        The numpy twin of the GPU ``fjlt`` kernel, which runs instead on a GPU
        (for a padded dimension up to :data:`gpuknn.kernels.MAX_FJLT_DIM`).

        Parameters
        ----------
        X : array of shape (n_rows, input_dim), float32

        Returns
        -------
        array of shape (n_rows, target_dim), float32
        """
        X = xp.asarray(X, dtype=xp.float32)
        flips, keep = self._arrays(xp)
        scale = xp.float32(1.0 / np.sqrt(self.target_dim))
        if xp is not np and self.padded_dim <= kernels.MAX_FJLT_DIM:
            return kernels.fjlt(X, flips, keep, float(scale), xp=xp)
        out = xp.empty((X.shape[0], self.target_dim), dtype=xp.float32)
        for start in range(0, X.shape[0], ROW_CHUNK):
            rows = slice(start, start + ROW_CHUNK)
            padded = xp.zeros((X[rows].shape[0], self.padded_dim), dtype=xp.float32)
            padded[:, : self.input_dim] = X[rows]
            padded *= flips
            out[rows] = walsh_hadamard(padded, xp=xp)[:, keep] * scale
        return out

    def _arrays(self, xp: ModuleType) -> tuple[Any, Any]:
        """(flips as float32, keep) in the memory of ``xp``, copied there once."""
        key = id(xp)
        if key not in self._on_device:
            self._on_device[key] = (xp.asarray(self.flips, dtype=xp.float32),
                                    xp.asarray(self.keep))
        return self._on_device[key]

    def check(self) -> None:
        """Raise ValueError unless this is a transform :meth:`fit` could have drawn."""
        padded = self.padded_dim
        if padded < max(self.input_dim, 1) or padded & (padded - 1):
            raise ValueError(f"{padded} flips for input dimension {self.input_dim}; expected "
                             "the next power of two")
        if not np.isin(self.flips, (-1, 1)).all():
            raise ValueError("flips must be -1 or +1")
        keep = self.keep
        if not 1 <= keep.size <= padded or keep.min() < 0 or keep.max() >= padded or (
                np.diff(keep) <= 0).any():
            raise ValueError(f"keep must be increasing coordinates within [0, {padded})")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays that define this transform, for the model file."""
        return {"flips": self.flips, "keep": self.keep,
                "input_dim": np.array(self.input_dim, dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> FJLT:
        """Inverse of :meth:`to_arrays`."""
        return cls(arrays["flips"], arrays["keep"], int(arrays["input_dim"]))


def walsh_hadamard(X: Any, *, xp: ModuleType = np) -> Any:
    """Unnormalised Walsh-Hadamard transform of every row (Sylvester order).

    Parameters
    ----------
    X : array of shape (n_rows, n), n a power of two

    Returns
    -------
    array of shape (n_rows, n)
        ``X @ H_n`` where ``H_n`` has entries +-1; ``H_n @ H_n = n I``.
    """
    n_rows, n = X.shape
    if n & (n - 1):
        raise ValueError(f"the Walsh-Hadamard transform needs a power-of-two width; got {n}")
    half = 1
    while half < n:
        pairs = X.reshape(n_rows, n // (2 * half), 2, half)
        first, second = pairs[:, :, 0, :], pairs[:, :, 1, :]
        X = xp.stack((first + second, first - second), axis=2).reshape(n_rows, n)
        half *= 2
    return X


REDUCTIONS = {"sign": SignProjection, "fjlt": FJLT}


def fit_reduction(kind: str, input_dim: int, target_dim: int, seed: int):
    """Fit the reduction named by ``dimension_reduction_type``."""
    return REDUCTIONS[kind].fit(input_dim, target_dim, seed)
