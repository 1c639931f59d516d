"""Benchmark data sets: presets made on the fly from a seed, or the user's own files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpuknn.datasets import load_letter, load_mnist
from gpuknn.datasets.synthetic import clustered, covtype_like, sift_like

PRESETS = ("tiny", "letter", "mnist", "covtype-like", "sift-like")


@dataclass
class Dataset:
    """Base rows, query rows and, when the set has them, labels.

    Attributes
    ----------
    name : str
    X : ndarray of shape (n_base, d), float32
    Q : ndarray of shape (n_queries, d), float32
    y, y_queries : ndarray of shape (n_base,) and (n_queries,), float32, or None
    """

    name: str
    X: np.ndarray
    Q: np.ndarray
    y: np.ndarray | None = None
    y_queries: np.ndarray | None = None

    @property
    def labelled(self) -> bool:
        """Whether accuracy can be measured (base and query labels exist)."""
        return self.y is not None and self.y_queries is not None

    def describe(self) -> dict:
        return {"name": self.name, "n_base": int(self.X.shape[0]), "dim": int(self.X.shape[1]),
                "n_queries": int(self.Q.shape[0]), "labelled": self.labelled}


def preset(name: str, seed: int = 0) -> Dataset:
    """One of :data:`PRESETS`.

    ``tiny`` (5,000 x 32 blobs, 500 queries; seconds), ``letter`` and ``mnist`` (the
    real sets bundled with gpuknn), ``covtype-like`` (581,012 x 54, 7 classes; the last
    10,000 rows are the queries) and ``sift-like`` (1,000,000 x 128 unlabelled, 10,000
    queries).
    """
    if name == "tiny":
        X, y = clustered(5_500, 32, 5, seed=seed + 1)
        return Dataset(name, X[:5_000], X[5_000:], y[:5_000], y[5_000:])
    if name in ("letter", "mnist"):
        X, y, Q, y_q = load_letter() if name == "letter" else load_mnist()
        return Dataset(name, X.astype(np.float32), Q.astype(np.float32), y, y_q)
    if name == "covtype-like":
        X, y = covtype_like(581_012, seed=20240607 + seed)
        X, y = X.astype(np.float32), y.astype(np.float32)
        return Dataset(name, X[:-10_000], X[-10_000:], y[:-10_000], y[-10_000:])
    if name == "sift-like":
        X = sift_like(1_010_000, seed=20240607 + seed)
        return Dataset(name, X[:1_000_000], X[1_000_000:])
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def from_files(data: str, content_type: str, queries: str | None,
               query_share: float = 0.01) -> Dataset:
    """The user's data through :func:`gpuknn.io.read`; without a query file, the last
    ``query_share`` of the rows (at least one) are the queries."""
    from gpuknn import io  # noqa: PLC0415 - the data layer only when files are given

    X, y = io.read(data, content_type)
    X = _dense(X)
    if queries is not None:
        Q, y_q = io.read(queries, content_type)
        return Dataset(data, X, _dense(Q), y, y_q)
    cut = len(X) - max(1, int(len(X) * query_share))
    return Dataset(data, X[:cut], X[cut:], None if y is None else y[:cut],
                   None if y is None else y[cut:])


def _dense(X) -> np.ndarray:
    return np.ascontiguousarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
