"""The parts a fitted model is made of, apart from the model that uses them.

:class:`Preparation` (how feature rows become index vectors), :class:`ModelParts` (what a
model file holds) and :func:`check_k`. :mod:`gpuknn.model.files` writes and reads
:class:`ModelParts`; :class:`~gpuknn.model.knn_model.KNNModel` is made from them, so the
file format never needs the model class and the model class imports the format one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn.errors import ClientError
from gpuknn.hyperparameters import Hyperparameters
from gpuknn.metrics import normalize_rows

ArrayLike = Any  # numpy.ndarray or cupy.ndarray


@dataclass
class Preparation:
    """How raw feature rows become index vectors.

    Attributes
    ----------
    feature_dim : int
        Features per input row.
    reduction : SignProjection or FJLT or None
    normalize : bool
        L2-normalise after reduction (COSINE).
    index_dim : int
        Dimension of the index vectors; larger than the reduced dimension when
        zeros are appended so that ``faiss_index_pq_m`` divides it.
    pq_m : int or None
        The PQ sub-vector count in effect (given or defaulted), for IVFPQ.
    """

    feature_dim: int
    reduction: Any
    normalize: bool
    index_dim: int
    pq_m: int | None = None

    def apply(self, X: ArrayLike, *, xp: ModuleType) -> ArrayLike:
        """Turn rows of shape (n, feature_dim) into index vectors (n, index_dim), float32."""
        if self.reduction is not None:
            X = self.reduction.apply(X, xp=xp)
        if self.normalize:
            X = normalize_rows(X, xp=xp)
        if X.shape[1] < self.index_dim:
            padded = xp.zeros((X.shape[0], self.index_dim), dtype=xp.float32)
            padded[:, : X.shape[1]] = X
            X = padded
        return xp.ascontiguousarray(X, dtype=xp.float32)


@dataclass(frozen=True)
class ModelParts:
    """Everything a fitted model is made of: what a model file holds.

    Attributes
    ----------
    hyperparameters : Hyperparameters
        As trained (``k`` and ``predictor_type`` as last set).
    preparation : Preparation
    index : ExactSearch or IVFSearch
        The prepared vectors of the sample, searchable, on ``device``.
    labels : ndarray of shape (n_indexed,), float32, or None
    ids : ndarray of shape (n_indexed,), int64
        Row number, in the training data as read, of every indexed vector.
    rows_seen : int
        Rows read during training.
    device : {"cpu", "gpu"}
        Where the index searches.
    """

    hyperparameters: Hyperparameters
    preparation: Preparation
    index: Any
    labels: np.ndarray | None
    ids: np.ndarray
    rows_seen: int
    device: str = "cpu"

    @property
    def n_indexed(self) -> int:
        """Rows in the index."""
        return int(self.index.ntotal)


def check_k(k: int, n_indexed: int) -> int:
    """Refuse a k larger than the number of indexed rows."""
    if not 1 <= int(k) <= n_indexed:
        raise ClientError(f"k={k} must be between 1 and the number of indexed rows "
                          f"({n_indexed}); lower k or index more rows (sample_size)")
    return int(k)
