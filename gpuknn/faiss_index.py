"""faiss IVFFlat and IVFPQ indexes, and faiss's file format for every index type.

faiss is an optional dependency (the ``cpu`` or ``gpu`` extra); it is imported
only by the functions here, with a clear error when it is missing.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn.errors import DataError, DependencyError, ModelFileError
from gpuknn.metrics import MISSING_INDEX, faiss_metric, missing_distance

PQ_BITS = 8


def require_faiss() -> ModuleType:
    """Import faiss, or explain how to install it.

    Before the first import, ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (a value
    set by the user wins): faiss's OpenMP threads otherwise spin while its BLAS
    works, which made IVFPQ training 8x slower on a 2-core machine (12.6 s vs
    1.5 s for MNIST, 16 sub-quantizers). libgomp reads the variable once, when
    it is loaded.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import faiss  # noqa: PLC0415 - optional dependency
    except ImportError as err:
        raise DependencyError(
            "faiss is required for IVF indexes and model files: "
            "pip install 'gpuknn[cpu]' (faiss-cpu) or 'gpuknn[gpu]' (faiss-gpu)"
        ) from err
    return faiss


class IVFSearch:
    """A trained and filled faiss IVF index (IVFFlat or IVFPQ).

    Parameters
    ----------
    index : faiss.IndexIVF
        A CPU index holding the base vectors.
    metric : {"L2", "INNER_PRODUCT", "COSINE"}
    nprobe : int
        Lists probed per query (capped at the number of lists).
    """

    def __init__(self, index: Any, metric: str, nprobe: int):
        self.index = index
        self.metric = metric
        self.nprobe = int(min(nprobe, index.nlist))

    @classmethod
    def build(cls, vectors: np.ndarray, *, index_type: str, metric: str, nlists: int,
              pq_m: int | None, nprobe: int, seed: int) -> IVFSearch:
        """Train an IVF index on ``vectors`` and add them.

        Parameters
        ----------
        vectors : ndarray of shape (n_base, dim), float32
            Prepared vectors (reduced, normalised and padded as needed).
        index_type : {"faiss.IVFFlat", "faiss.IVFPQ"}
        nlists : int
            Number of inverted lists, at most ``n_base``.
        pq_m : int or None
            PQ sub-vectors (IVFPQ), dividing ``dim``.

        Raises
        ------
        DataError
            When there are too few vectors to train the index.
        """
        faiss = require_faiss()
        n_base, dim = vectors.shape
        if nlists > n_base:
            raise DataError(f"faiss_index_ivf_nlists={nlists} is larger than the number of "
                            f"sampled rows ({n_base}); use at most {n_base} or \"auto\"")
        mtype = faiss_metric(metric)
        quantizer = faiss.IndexFlat(dim, mtype)
        if index_type == "faiss.IVFPQ":
            if n_base < 2**PQ_BITS:
                raise DataError(f"faiss.IVFPQ needs at least {2**PQ_BITS} sampled rows to train "
                                f"its codebooks; got {n_base}. Use faiss.IVFFlat or faiss.Flat")
            index = faiss.IndexIVFPQ(quantizer, dim, nlists, pq_m, PQ_BITS, mtype)
            index.pq.cp.seed = seed
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlists, mtype)
        index.cp.seed = seed
        index.own_fields = True
        quantizer.this.disown()
        index.train(vectors)
        index.add(vectors)
        return cls(index, metric, nprobe)

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """Dimension of the indexed vectors."""
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest indexed vectors of each query.

        Queries that find fewer than k vectors in their ``nprobe`` lists are
        searched again over every list, so that all k are found.

        Parameters
        ----------
        queries : ndarray of shape (n_queries, dim), float32
        k : int

        Returns
        -------
        distances : ndarray of shape (n_queries, k), float32
            In the convention of :mod:`gpuknn.metrics`.
        positions : ndarray of shape (n_queries, k), int64
            Rows of the indexed vectors.
        """
        faiss = require_faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        # Per-call parameters: concurrent searches never share a mutable nprobe.
        params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        distances, positions = self.index.search(queries, k, params=params)
        short = np.flatnonzero((positions == MISSING_INDEX).any(axis=1))
        if short.size and self.nprobe < self.index.nlist:
            everywhere = faiss.SearchParametersIVF(nprobe=self.index.nlist)
            distances[short], positions[short] = self.index.search(queries[short], k,
                                                                   params=everywhere)
        missing = positions == MISSING_INDEX
        if self.metric == "L2":
            distances = np.sqrt(np.maximum(distances, 0))
        distances[missing] = missing_distance(self.metric)
        return distances.astype(np.float32, copy=False), positions.astype(np.int64, copy=False)


def flat_index_bytes(vectors: np.ndarray, metric: str) -> bytes:
    """faiss's file form of an ``IndexFlat`` holding ``vectors``."""
    faiss = require_faiss()
    index = faiss.IndexFlat(vectors.shape[1], faiss_metric(metric))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return faiss.serialize_index(index).tobytes()


def index_bytes(index: Any) -> bytes:
    """faiss's file form of any CPU index."""
    return require_faiss().serialize_index(index).tobytes()


def read_index(data: bytes, name: str) -> Any:
    """Deserialise a faiss index, naming the file when it is corrupt."""
    faiss = require_faiss()
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise ModelFileError(f"{name}: not a readable faiss index ({first_line})") from None


def map_index_file(path: str) -> Any:
    """Read an index file with faiss's memory mapping of inverted lists (IVF indexes).

    The lists stay in the page cache, shared by every process that maps the file
    (several server workers), instead of one private copy each.
    """
    faiss = require_faiss()
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP)
    except RuntimeError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise ModelFileError(f"{path}: not a readable faiss index ({first_line})") from None


def flat_vectors(index: Any) -> np.ndarray:
    """The vectors stored in a faiss ``IndexFlat``, as an (ntotal, d) float32 copy."""
    faiss = require_faiss()
    flat = faiss.downcast_index(index)
    codes = faiss.vector_to_array(flat.codes)
    return codes.view(np.float32).reshape(flat.ntotal, flat.d).copy()


def index_kind(index: Any) -> str:
    """``faiss.Flat``, ``faiss.IVFFlat`` or ``faiss.IVFPQ`` for a deserialised index."""
    faiss = require_faiss()
    index = faiss.downcast_index(index)
    for kind, cls in (("faiss.IVFPQ", faiss.IndexIVFPQ), ("faiss.IVFFlat", faiss.IndexIVFFlat),
                      ("faiss.Flat", faiss.IndexFlat)):
        if isinstance(index, cls):
            return kind
    raise ModelFileError(f"unsupported faiss index class {type(index).__name__}")
