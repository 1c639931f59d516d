"""faiss IVFFlat and IVFPQ indexes, and faiss's file format for every index type.

faiss is an optional dependency (the ``cpu`` or ``gpu`` extra); it is imported
only by the functions here and by :mod:`gpuknn.search.faiss_gpu`, with a clear error when
it is missing.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn.errors import DataError, DependencyError, ModelFileError, first_line
from gpuknn.metrics import MISSING_INDEX, from_scores
from gpuknn.search.faiss_gpu import GPU_MAX_K, GpuIVF, faiss_has_gpu
from gpuknn.search.topk import in_score_order, merge_with_missing, missing_rows, tied_past

log = logging.getLogger(__name__)

PQ_BITS = 8
# Rows copied into an index at a time when training gives its sample up (32 MiB of
# 128-d float32): the sample and the lists overlap by at most this much.
ADD_CHUNK_ROWS = 65_536


def _add(faiss: ModuleType, index: Any, vectors: np.ndarray, *, give_up: bool) -> None:
    """Add ``vectors`` to a trained index; given up, in chunks whose memory is handed back
    as soon as faiss has copied them.

    As faiss's own ``add`` does, every row is assigned its list first, in one call; only
    the copying into the lists is chunked, so that no large temporary is allocated and
    freed between the lists' growth (which left about 5% of the lists' size stranded in
    the heap when whole ``add`` calls were chunked).
    """
    if not give_up:
        index.add(vectors)
        return
    lists = np.ascontiguousarray(index.quantizer.assign(vectors, 1).reshape(-1), np.int64)
    for start, stop in add_chunks(len(vectors)):
        index.add_core(stop - start, faiss.swig_ptr(vectors[start:stop]), None,
                       faiss.swig_ptr(lists[start:stop]))
        _backend.discard_rows(vectors, stop, done=start)


def add_chunks(n_rows: int, size: int | None = None) -> list[tuple[int, int]]:
    """``(start, stop)`` of the chunks an index is filled in: ``size`` rows
    (:data:`ADD_CHUNK_ROWS`) each, the last between ``size`` and ``2 * size`` (or all
    ``n_rows``). faiss encodes fewer than 20 rows without BLAS (a PQ code could then
    differ in its last bit of rounding); no chunk is that small unless the sample is."""
    size = ADD_CHUNK_ROWS if size is None else size
    bounds, start = [], 0
    while n_rows - start > 2 * size:
        bounds.append((start, start + size))
        start += size
    return [*bounds, (start, n_rows)]


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
        A CPU index holding the base vectors; the one saved in model files.
    metric : {"L2", "INNER_PRODUCT", "COSINE"}
    nprobe : int
        Lists probed per query (capped at the number of lists).
    gpu : GpuIVF, optional
        A GPU copy of ``index`` (:mod:`gpuknn.search.faiss_gpu`) that searches instead of it
        wherever faiss's GPU search allows.
    mapped_from : bytes-like, optional
        The index file's bytes (a read-only map of it) when ``index`` maps its lists from
        that file (:func:`map_index_file`): faiss cannot serialise mapped lists, so
        saving writes these bytes instead.
    """

    def __init__(self, index: Any, metric: str, nprobe: int, *, gpu: GpuIVF | None = None,
                 mapped_from: Any = None):
        self.index = index
        self.metric = metric
        self.nprobe = int(min(nprobe, index.nlist))
        self.gpu = gpu
        self.mapped_from = mapped_from
        self._params: dict[int, Any] = {}

    @property
    def device(self) -> str:
        """``"gpu"`` when searches run on faiss-gpu, else ``"cpu"``."""
        return "cpu" if self.gpu is None else "gpu"

    @classmethod
    def build(cls, vectors: np.ndarray, *, index_type: str, metric: str, nlists: int,
              pq_m: int | None, nprobe: int, seed: int, device: str = "cpu",
              give_up: bool = False) -> IVFSearch:
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
        device : {"cpu", "gpu"}
            ``"gpu"`` trains, fills and searches on faiss-gpu where it is installed;
            elsewhere (or if faiss-gpu fails) the CPU does, with a warning.
        give_up : bool
            The caller gives ``vectors`` up (training's sample): on the CPU they are added
            :data:`ADD_CHUNK_ROWS` at a time, and each chunk's memory is handed back once
            faiss holds its copy (:func:`gpuknn._backend.discard_rows`), so that the build
            does not hold the sample twice. ``vectors`` reads as zeros afterwards. The
            index is byte for byte the one a single ``add`` makes.

        Raises
        ------
        DataError
            When there are too few vectors to train the index.
        """
        faiss = require_faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        index = _untrained_index(faiss, vectors.shape, index_type=index_type, metric=metric,
                                 nlists=nlists, pq_m=pq_m, seed=seed)
        if device == "gpu" and _gpu_usable(faiss, nprobe):
            try:
                gpu = GpuIVF.from_cpu(faiss, index, index_type=index_type, pq_m=pq_m,
                                      nprobe=min(nprobe, nlists))
                gpu.train_and_add(vectors, seed)
                return cls(gpu.to_cpu(faiss), metric, nprobe, gpu=gpu)
            except RuntimeError as err:
                log.warning("faiss-gpu could not build the %s index (%s); building it on "
                            "the CPU", index_type, first_line(err))
        index.train(vectors)
        _add(faiss, index, vectors, give_up=give_up)
        return cls(index, metric, nprobe)

    def to_device(self, device: str, *, ordinal: int = 0) -> IVFSearch:
        """This index, searching on faiss-gpu (GPU ``ordinal``) if ``device`` is ``"gpu"``
        and it can.

        Without faiss-gpu, or if the copy fails, the CPU index keeps searching and a
        warning says why.
        """
        faiss = require_faiss()
        if device != "gpu" or self.gpu is not None or not _gpu_usable(faiss, self.nprobe):
            return self
        kind = index_kind(self.index)
        pq_m = int(faiss.downcast_index(self.index).pq.M) if kind == "faiss.IVFPQ" else None
        try:
            self.gpu = GpuIVF.from_cpu(faiss, self.index, index_type=kind, pq_m=pq_m,
                                       nprobe=self.nprobe, device=ordinal)
        except RuntimeError as err:
            log.warning("faiss-gpu could not load the %s index (%s); it searches on the CPU",
                        kind, first_line(err))
        return self

    def faiss_bytes(self) -> tuple[int, int]:
        """Memory that faiss holds for this index: (host bytes of this process alone,
        device bytes).

        The coarse quantizer's centroids, and for IVFPQ the codebooks and the precomputed
        distance table, are this process's own. The inverted lists (codes and ids) are
        too, unless they are mapped from the model file (:attr:`mapped_from`, shared
        through the page cache). A GPU copy holds the lists and the centroids again.
        """
        faiss = require_faiss()
        ivf = faiss.extract_index_ivf(self.index)
        centroids = int(ivf.quantizer.ntotal) * int(ivf.d) * 4
        lists = int(ivf.ntotal) * (int(ivf.code_size) + 8)
        tables = 0
        if isinstance(ivf, faiss.IndexIVFPQ):
            tables = 4 * (int(ivf.pq.centroids.size()) + int(ivf.precomputed_table.size()))
        host = centroids + tables + (0 if self.mapped_from is not None else lists)
        device = 0 if self.gpu is None else centroids + lists + tables
        return host, device

    def example_vector(self) -> np.ndarray:
        """The first list's centroid, (dim,) float32: a query that is cheap to answer."""
        faiss = require_faiss()
        return np.asarray(faiss.extract_index_ivf(self.index).quantizer.reconstruct(0),
                          dtype=np.float32)

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
        searched again over every list (on the CPU index), so that all k are found.

        Parameters
        ----------
        queries : ndarray of shape (n_queries, dim), float32
        k : int

        Returns
        -------
        distances : ndarray of shape (n_queries, k), float32
            In the convention of :mod:`gpuknn.metrics`.
        positions : ndarray of shape (n_queries, k), int64
            Rows of the indexed vectors (the ids they were added with).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, positions = self.ranked(queries, k)
        # Where nothing is missing (nearly always), one flat pass over the positions is the
        # only cost of the short-row handling.
        short = missing_rows(positions)
        if short.size and self.nprobe < self.index.nlist:
            scores[short], positions[short] = self.ranked(queries[short], k,
                                                          nprobe=self.index.nlist)
        return from_scores(scores, self.metric), positions

    def ranked(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """The best k in ``nprobe`` lists (default :attr:`nprobe`) by (ranking score, id):
        squared L2 distance or negated inner product, float32, ascending; a missing
        neighbour is ``+inf`` and ``-1``. Short rows are not searched again:
        :meth:`search` does that, and so does a sharded index, over all its shards.

        faiss keeps an arbitrary few of the rows tied at the k-th distance. So one more is
        asked for, and rows whose last one still ties the k-th are asked again with more
        (``4 take + 8``), until every row tied at the k-th is seen: ties then go to the
        smaller id, as in exact search and whatever the index's split into shards.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = self.nprobe if nprobe is None else int(nprobe)
        take = max(min(k + 1, self.ntotal), k)  # one more: does a row tie the k-th?
        scores, ids = self._best(queries, take, nprobe)
        tied = np.flatnonzero(tied_past(scores, ids, k)) if take < self.ntotal else ()
        while len(tied):  # rare: ask those rows again, wider
            take = min(4 * take + 8, self.ntotal)
            wider = self._best(queries[tied], take, nprobe)
            scores[tied, :k], ids[tied, :k] = wider[0][:, :k], wider[1][:, :k]
            still = tied_past(*wider, k) if take < self.ntotal else np.zeros(len(tied), bool)
            tied = tied[still]
        return scores[:, :k], ids[:, :k]

    def _best(self, queries: np.ndarray, take: int, nprobe: int,
              ) -> tuple[np.ndarray, np.ndarray]:
        """faiss's best ``take`` as ranking scores, in (score, id) order. faiss's CPU heaps
        give that order for L2; inner-product heaps and faiss-gpu's selection may order
        ties otherwise, and such an answer is sorted."""
        on_gpu = nprobe == self.nprobe and self.gpu is not None and self.gpu.can_search(take)
        if on_gpu:
            scores, ids = self.gpu.search(queries, take)
        else:
            scores, ids = self.index.search(queries, take,
                                            params=self._search_parameters(nprobe))
        scores = scores.astype(np.float32, copy=False)
        if self.metric != "L2":
            np.negative(scores, out=scores)
        missing = ids == MISSING_INDEX  # faiss reports them at its float maximum
        if missing.any():
            scores[missing] = np.inf
        ids = ids.astype(np.int64, copy=False)
        if not in_score_order(scores, ids):
            scores, ids = merge_with_missing(scores, ids, take)
        return scores, ids

    def _search_parameters(self, nprobe: int) -> Any:
        """faiss's ``SearchParametersIVF`` probing ``nprobe`` lists, made once per value.

        Each search passes its parameters instead of setting the index's ``nprobe``, so
        that concurrent searches never share a mutable setting; faiss only reads them, so
        one object per value serves every search and thread.
        """
        params = self._params.get(nprobe)
        if params is None:
            params = self._params[nprobe] = require_faiss().SearchParametersIVF(nprobe=nprobe)
        return params


def _untrained_index(faiss: ModuleType, shape: tuple[int, int], *, index_type: str,
                     metric: str, nlists: int, pq_m: int | None, seed: int) -> Any:
    """An empty CPU IVF index with gpuknn's parameters and seeds."""
    n_base, dim = shape
    if nlists > n_base:
        raise DataError(f"faiss_index_ivf_nlists={nlists} is larger than the number of "
                        f"sampled rows ({n_base}); use at most {n_base} or \"auto\"")
    mtype = faiss.METRIC_L2 if metric == "L2" else faiss.METRIC_INNER_PRODUCT  # COSINE: IP
    quantizer = faiss.IndexFlat(dim, mtype)
    if index_type == "faiss.IVFPQ":
        if n_base < 2**PQ_BITS:
            raise DataError(f"faiss.IVFPQ needs at least {2**PQ_BITS} sampled rows to train "
                            f"its codebooks; got {n_base}. Use faiss.IVFFlat or faiss.Flat")
        index = faiss.IndexIVFPQ(quantizer, dim, nlists, pq_m, PQ_BITS, mtype)
        _quiet_kmeans(index.pq.cp, seed, n_base, 2**PQ_BITS, f"each of the {pq_m} PQ codebooks")
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlists, mtype)
    _quiet_kmeans(index.cp, seed, n_base, nlists, "the IVF lists")
    index.own_fields = True
    quantizer.this.disown()
    return index


# faiss's k-means warns (on stderr, once per codebook) below this many points per centroid.
KMEANS_POINTS_PER_CENTROID = 39


def _quiet_kmeans(params: Any, seed: int, n_points: int, n_centroids: int, what: str) -> None:
    """Seed a k-means and replace faiss's repeated stderr warning about few training points
    with one log line (the training itself is unchanged: the threshold only warns)."""
    params.seed = seed
    if n_points < KMEANS_POINTS_PER_CENTROID * n_centroids:
        log.info("training %s on %d rows, fewer than the %d per centroid that faiss advises "
                 "for %d centroids", what, n_points, KMEANS_POINTS_PER_CENTROID, n_centroids)
    params.min_points_per_centroid = 1


def _gpu_usable(faiss: ModuleType, nprobe: int) -> bool:
    """Whether an IVF index with ``nprobe`` may go to faiss-gpu; warns why not."""
    if not faiss_has_gpu(faiss):
        log.warning("this faiss has no GPU support (install the 'gpu' extra, faiss-gpu with "
                    "CUDA 12): IVF indexes search on the CPU")
        return False
    if nprobe > GPU_MAX_K:
        log.warning("faiss_index_nprobe=%d is above faiss-gpu's limit of %d: the IVF index "
                    "searches on the CPU", nprobe, GPU_MAX_K)
        return False
    return True


def index_bytes(index: Any) -> bytes:
    """faiss's file form of any CPU index."""
    return require_faiss().serialize_index(index).tobytes()


def read_index(data: bytes, name: str) -> Any:
    """Deserialise a faiss index, naming the file when it is corrupt."""
    faiss = require_faiss()
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as err:
        raise ModelFileError(f"{name}: not a readable faiss index ({first_line(err)})") from None


def map_index_file(path: str) -> Any:
    """Read an index file with faiss's memory mapping of inverted lists (IVF indexes).

    The lists stay in the page cache, shared by every process that maps the file
    (several server workers), instead of one private copy each.
    """
    faiss = require_faiss()
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP)
    except RuntimeError as err:
        raise ModelFileError(f"{path}: not a readable faiss index ({first_line(err)})") from None


def index_kind(index: Any) -> str:
    """``faiss.Flat``, ``faiss.IVFFlat`` or ``faiss.IVFPQ`` for a deserialised index."""
    faiss = require_faiss()
    index = faiss.downcast_index(index)
    for kind, cls in (("faiss.IVFPQ", faiss.IndexIVFPQ), ("faiss.IVFFlat", faiss.IndexIVFFlat),
                      ("faiss.Flat", faiss.IndexFlat)):
        if isinstance(index, cls):
            return kind
    raise ModelFileError(f"unsupported faiss index class {type(index).__name__}")
