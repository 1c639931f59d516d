"""gpuknn and its peers behind one interface: ``build(X)``, then ``search(Q, k)`` -> ids.

Every engine returns the row numbers of the k nearest base rows, nearest first, so
that recall and accuracy are computed the same way for all of them (by
:mod:`gpuknn.benchmark.measure`). Peers are imported only when used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuknn._backend import usable_cores

INDEX_TYPES = ("faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ")
PEERS = ("sklearn", "faiss", "hnswlib")
HNSW_EF = (16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Engine:
    """One engine in one setting.

    Attributes
    ----------
    engine : str
        ``gpuknn``, ``sklearn``, ``faiss`` or ``hnswlib``.
    index : str
        ``faiss.Flat``, ``faiss.IVFFlat``, ``faiss.IVFPQ``, ``brute`` (scikit-learn) or
        ``HNSW``.
    device : str
    settings : dict
        What the index was built with (nlists, nprobe, pq_m, M, ef, ...).
    """

    engine: str
    index: str
    device: str = "cpu"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.engine} {self.index} ({self.device})"

    def build(self, X: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError


class Gpuknn(Engine):
    """gpuknn's own index through :class:`gpuknn.KNN` (the sample is the whole base)."""

    def __init__(self, index: str, metric: str, device: str, k: int):
        super().__init__("gpuknn", index, device)
        self.metric, self.k = metric, k

    def build(self, X: np.ndarray) -> None:
        from gpuknn import KNN  # noqa: PLC0415

        estimator = KNN(k=self.k, predictor_type="classifier", sample_size=len(X),
                        feature_dim=X.shape[1], index_type=self.index,
                        index_metric=self.metric, device=self.device)
        self.model = estimator.fit(X).fitted_model
        prep = self.model.preparation
        self.settings = {"nprobe": self.model.hyperparameters.faiss_index_nprobe,
                         "pq_m": prep.pq_m,
                         "pruned": bool(getattr(self.model.index, "partitioned", False))}
        nlist = getattr(getattr(self.model.index, "index", None), "nlist", None)
        if nlist is not None:
            self.settings["nlists"] = int(nlist)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        from gpuknn import _backend  # noqa: PLC0415

        return _backend.to_host(self.model.kneighbors(Q, k)[1])


class Sklearn(Engine):
    """scikit-learn's brute force (``NearestNeighbors(algorithm="brute")``), all cores."""

    def __init__(self, metric: str):
        super().__init__("sklearn", "brute")
        self.metric = {"L2": "euclidean", "INNER_PRODUCT": "cosine", "COSINE": "cosine"}[metric]

    def build(self, X: np.ndarray) -> None:
        from sklearn.neighbors import NearestNeighbors  # noqa: PLC0415

        self.model = NearestNeighbors(algorithm="brute", metric=self.metric, n_jobs=-1).fit(X)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        return self.model.kneighbors(Q, k, return_distance=False)


class Faiss(Engine):
    """Raw faiss with the index and parameters gpuknn used (``like``)."""

    def __init__(self, index: str, like: dict[str, Any]):
        super().__init__("faiss", index, settings=dict(like))

    def build(self, X: np.ndarray) -> None:
        from gpuknn.search.faiss_index import require_faiss  # noqa: PLC0415

        faiss = require_faiss()
        X = self._padded(X)
        dim = X.shape[1]
        if self.index == "faiss.Flat":
            self.faiss_index = faiss.IndexFlatL2(dim)
        else:
            quantizer = faiss.IndexFlatL2(dim)
            nlists = self.settings["nlists"]
            if self.index == "faiss.IVFPQ":
                self.faiss_index = faiss.IndexIVFPQ(quantizer, dim, nlists,
                                                    self.settings["pq_m"], 8)
            else:
                self.faiss_index = faiss.IndexIVFFlat(quantizer, dim, nlists)
            self.faiss_index.own_fields = True
            quantizer.this.disown()
            _quiet(self.faiss_index)
            self.faiss_index.train(X)
            self.faiss_index.nprobe = self.settings["nprobe"]
        self.faiss_index.add(X)

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        return self.faiss_index.search(self._padded(Q), k)[1]

    def _padded(self, X: np.ndarray) -> np.ndarray:
        """Zero columns up to a multiple of pq_m for IVFPQ, as gpuknn pads."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        pq_m = self.settings.get("pq_m") if self.index == "faiss.IVFPQ" else None
        if not pq_m or X.shape[1] % pq_m == 0:
            return X
        width = -(-X.shape[1] // pq_m) * pq_m
        return np.ascontiguousarray(np.pad(X, ((0, 0), (0, width - X.shape[1]))))


def _quiet(index: Any) -> None:
    """No stderr warning per k-means about few training points, as in gpuknn's own indexes
    (the threshold only warns; training is the same)."""
    index.cp.min_points_per_centroid = 1
    if hasattr(index, "pq"):
        index.pq.cp.min_points_per_centroid = 1


class Hnswlib(Engine):
    """hnswlib's HNSW (M=16, ef_construction=200), ``ef`` tuned by :meth:`tune`."""

    def __init__(self):
        super().__init__("hnswlib", "HNSW", settings={"M": 16, "ef_construction": 200})

    def build(self, X: np.ndarray) -> None:
        import hnswlib  # noqa: PLC0415

        self.hnsw = hnswlib.Index(space="l2", dim=X.shape[1])
        self.hnsw.init_index(max_elements=len(X), M=16, ef_construction=200, random_seed=0)
        self.hnsw.add_items(X, np.arange(len(X)), num_threads=usable_cores())
        self.settings["ef"] = HNSW_EF[0]

    def tune(self, Q: np.ndarray, k: int, exact: np.ndarray, recall_target: float,
             recall_of) -> None:
        """The smallest ``ef`` of :data:`HNSW_EF` (at least k) whose recall reaches the target."""
        for ef in (ef for ef in HNSW_EF if ef >= k):
            self.settings["ef"] = ef
            if recall_of(self.search(Q, k), exact) >= recall_target:
                return

    def search(self, Q: np.ndarray, k: int) -> np.ndarray:
        self.hnsw.set_ef(max(self.settings["ef"], k))
        return self.hnsw.knn_query(Q, k, num_threads=usable_cores())[0].astype(np.int64)


def available(peer: str) -> bool:
    """Whether a peer's library imports."""
    try:
        importlib.import_module(peer)  # the peers' names are their modules' names
    except ImportError:
        return False
    return True
