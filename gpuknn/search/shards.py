"""One index split into shards, searched concurrently and merged into one answer.

A sharded index answers exactly as the index it was split from. Each shard holds a
contiguous range of the base's rows (global row ids ``[start, stop)``):

- an exact search (:class:`~gpuknn.search.exact.ExactSearch`) holds those rows' vectors;
- an IVF index (:class:`~gpuknn.search.faiss_index.IVFSearch`) holds the same trained
  coarse quantizer (and PQ codebooks) as the whole, and the entries of every inverted
  list whose ids fall in the range (faiss's ``copy_subset_to``), keeping their ids.

A search asks every shard for its best ``min(k, rows)`` by ranking score (squared L2 or
negated inner product), each on its own thread (and, on GPUs, its own device), and
merges the lists by (score, global row id): the order every unsharded search returns,
ties to the smaller row. An IVF row short of k neighbours is searched again over every
list of every shard, as the unsharded index does. Only then are scores turned into the
returned distances, so that a tie in the square root never reorders rows.

A shard that fails fails the whole search with a :class:`ShardError` naming it; a
partial answer is never returned.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn.errors import GpuknnError
from gpuknn.metrics import MISSING_INDEX, from_scores
from gpuknn.search.exact import ExactSearch, single_threaded_blas
from gpuknn.search.faiss_index import IVFSearch, require_faiss
from gpuknn.search.streamed import StreamedSearch
from gpuknn.search.topk import merge_with_missing, missing_rows

log = logging.getLogger(__name__)


class ShardError(GpuknnError):
    """A shard could not answer its part of a search; the message names the shard."""


@dataclass(frozen=True)
class Shard:
    """One shard: the search over global rows ``[start, stop)``.

    Attributes
    ----------
    number : int
        0-based, in row order.
    start, stop : int
        The global row ids it holds.
    search : ExactSearch or IVFSearch or None
        None for an empty shard. An exact search's positions are ``row - start``; an IVF
        index keeps the global ids.
    device : int or None
        The GPU it lives on, None on the CPU.
    """

    number: int
    start: int
    stop: int
    search: Any
    device: int | None = None

    @property
    def rows(self) -> int:
        """Rows held."""
        return self.stop - self.start

    def describe(self, total: int) -> str:
        """Its name in errors and logs: ``shard 2 of 7 (rows 200-299, GPU 1)``."""
        place = "CPU" if self.device is None else f"GPU {self.device}"
        span = "no rows" if not self.rows else f"rows {self.start}-{self.stop - 1}"
        return f"shard {self.number} of {total} ({span}, {place})"

    def ranked(self, queries: np.ndarray, k: int, nprobe: int | None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """This shard's best ``min(k, rows)`` by score, padded to k with ``+inf`` and
        ``-1``, as host arrays in global row ids."""
        scores = np.full((len(queries), k), np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), MISSING_INDEX, dtype=np.int64)
        take = min(k, self.rows)
        if take == 0:
            return scores, rows
        with _backend.on_device(self.device):
            xp = getattr(self.search, "xp", np)
            found, at = self.search.ranked(_backend.to_device(queries, xp), take, nprobe=nprobe)
            found, at = _backend.to_host(found), _backend.to_host(at)
        scores[:, :take] = found
        offset = 0 if isinstance(self.search, IVFSearch) else self.start  # IVF keeps global ids
        rows[:, :take] = np.where(at == MISSING_INDEX, MISSING_INDEX, at + offset)
        return scores, rows


class ShardedSearch:
    """Shards of one index, answering as the index would.

    Parameters
    ----------
    shards : list of Shard
        Covering rows ``0 .. n - 1`` in order, without gaps.
    metric : {"L2", "INNER_PRODUCT", "COSINE"}
    whole : ExactSearch or IVFSearch
        The index the shards were split from; a model file saves it, and it answers
        :meth:`example_vector`.
    """

    xp = np  # queries arrive on the host; each shard copies them to its device

    def __init__(self, shards: list[Shard], metric: str, whole: Any):
        starts = [shard.start for shard in shards]
        if not shards or starts != [0] + [shard.stop for shard in shards[:-1]]:
            bounds = [(shard.start, shard.stop) for shard in shards]
            raise ValueError(f"shards must cover the rows in order without gaps; got {bounds}")
        self.shards = shards
        self.metric = metric
        self.whole = whole
        self.nprobe = getattr(whole, "nprobe", None)
        self._nlist = getattr(getattr(whole, "index", None), "nlist", None)
        self._pool = ThreadPoolExecutor(max(1, len(self.active)),
                                        thread_name_prefix="gpuknn-shard")

    @property
    def active(self) -> list[Shard]:
        """The shards that hold rows."""
        return [shard for shard in self.shards if shard.rows]

    @property
    def ntotal(self) -> int:
        """Rows of all shards together."""
        return self.shards[-1].stop

    @property
    def dim(self) -> int:
        """Dimension of the indexed vectors."""
        return int(self.whole.dim)

    @property
    def device(self) -> str:
        """``"gpu"`` when any shard searches on a GPU, else ``"cpu"``."""
        return "gpu" if any(shard.device is not None for shard in self.shards) else "cpu"

    def example_vector(self) -> np.ndarray:
        """The whole index's cheap query, (dim,) float32."""
        return self.whole.example_vector()

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows of all shards, as the unsharded index answers.

        Parameters
        ----------
        queries : array of shape (n_queries, dim), float32
        k : int
            ``1 <= k``; rows beyond the base are missing (``-1``).

        Returns
        -------
        distances : ndarray of shape (n_queries, k), float32
            In the convention of :mod:`gpuknn.metrics`.
        positions : ndarray of shape (n_queries, k), int64
            Global row ids; ties are broken by the smaller row.

        Raises
        ------
        ShardError
            When a shard fails; its message names the shard and the cause.
        """
        queries = np.ascontiguousarray(_backend.to_host(queries), dtype=np.float32)
        scores, rows = self.ranked(queries, k)
        short = missing_rows(rows)
        if short.size and self._nlist is not None and self.nprobe < self._nlist:
            scores[short], rows[short] = self.ranked(queries[short], k, nprobe=self._nlist)
        return from_scores(scores, self.metric), rows

    def ranked(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               ) -> tuple[np.ndarray, np.ndarray]:
        """Every shard's best by score, merged: (n, k) scores and global rows."""
        shards = self.active
        if not shards:
            return self.shards[0].ranked(queries, k, nprobe)
        with _blas_limit(shards):
            futures = [self._pool.submit(shard.ranked, queries, k, nprobe)
                       for shard in shards]
            parts = [_result(future, shard, len(self.shards))
                     for future, shard in zip(futures, shards, strict=True)]
        return merge_parts(parts, k)

    def close(self) -> None:
        """Stop the shards' threads (searches after this fail)."""
        self._pool.shutdown(wait=True)


def merge_parts(parts: list[tuple[np.ndarray, np.ndarray]], k: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row's candidates from every part, by (score, row).

    Parameters
    ----------
    parts : list of (scores, rows)
        Each (n, k_i): ranking scores (float32, ``+inf`` for missing) and global rows
        (int64, ``-1`` for missing).
    k : int

    Returns
    -------
    scores : ndarray of shape (n, k), float32
    rows : ndarray of shape (n, k), int64
        Missing neighbours last, as ``+inf`` and ``-1``.
    """
    scores = np.concatenate([part[0] for part in parts], axis=1)
    rows = np.concatenate([part[1] for part in parts], axis=1)
    return merge_with_missing(scores, rows, k)


def split_rows(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` contiguous row ranges of near-equal size covering ``0 .. n_rows - 1``
    (the first ``n_rows % n_shards`` one row larger; empty when shards outnumber rows)."""
    if n_shards < 1:
        raise ValueError(f"shards must be at least 1; got {n_shards}")
    size, extra = divmod(n_rows, n_shards)
    stops = np.cumsum([size + (i < extra) for i in range(n_shards)])
    return [(int(stop - size - (i < extra)), int(stop)) for i, stop in enumerate(stops)]


def shard_index(index: Any, n_shards: int, *, devices: tuple[int, ...] = (),
                partition: str = "auto", segment_rows: int = 0) -> ShardedSearch:
    """Split an exact or IVF index into ``n_shards`` that answer as it does.

    Parameters
    ----------
    index : ExactSearch or IVFSearch
        On the CPU (a model file's maps, or a freshly built index).
    n_shards : int
    devices : tuple of int
        GPUs to place the shards on, round robin; empty keeps them on the CPU.
    partition : {"auto", "never", "always"}
        Cluster pruning of each exact shard on the CPU (see :class:`ExactSearch`).
    segment_rows : int
        Exact search only: keep each shard's rows in host memory and stream them through
        its device this many at a time (:class:`~gpuknn.search.streamed.StreamedSearch`).

    Returns
    -------
    ShardedSearch
    """
    ranges = split_rows(index.ntotal, n_shards)
    shards = []
    for number, (start, stop) in enumerate(ranges):
        device = devices[number % len(devices)] if devices else None
        search = None
        if stop > start:
            with _backend.on_device(device):
                search = _shard_search(index, start, stop, device, partition=partition,
                                       segment_rows=segment_rows)
        shards.append(Shard(number, start, stop, search, device))
    sizes = ", ".join(str(stop - start) for start, stop in ranges)
    log.info("%s split into %d shards of %s rows, on %s", type(index).__name__, n_shards,
             sizes, ", ".join(f"GPU {d}" for d in devices) if devices else "the CPU")
    return ShardedSearch(shards, index.metric, index)


def on_device(index: Any, device: int) -> Any:
    """The whole of an exact or IVF index loaded on the CPU, searching on GPU ``device``
    (an IVF index keeps its CPU index, mapped lists and all, for saving)."""
    with _backend.on_device(device):
        if isinstance(index, IVFSearch):
            return IVFSearch(index.index, index.metric, index.nprobe,
                             mapped_from=index.mapped_from).to_device("gpu", ordinal=device)
        return _shard_search(index, 0, index.ntotal, device, partition="never",
                             segment_rows=0)


def _shard_search(index: Any, start: int, stop: int, device: int | None, *,
                  partition: str, segment_rows: int) -> Any:
    if isinstance(index, ExactSearch):
        xp = _backend.array_module("cpu" if device is None else "gpu")
        vectors = _rows_in_order(index, start, stop)
        if segment_rows:
            return StreamedSearch(vectors, index.metric, xp=xp, segment_rows=segment_rows,
                                  device=device)
        return ExactSearch(_backend.to_device(vectors, xp), index.metric, xp=xp,
                           tile_bytes=None if device is not None else index.tile_bytes,
                           partition=partition if device is None else "never")
    if isinstance(index, IVFSearch):
        shard = IVFSearch(ivf_subset(index.index, start, stop), index.metric, index.nprobe)
        return shard if device is None else shard.to_device("gpu", ordinal=device)
    raise TypeError(f"cannot shard a {type(index).__name__}")


def _rows_in_order(index: ExactSearch, start: int, stop: int) -> np.ndarray:
    """Base rows ``[start, stop)`` in row order: a view, or a copy where the base is
    stored cluster by cluster."""
    vectors = _backend.to_host(index.vectors)
    if index.partition is None:
        return vectors[start:stop]
    stored_at = np.empty(index.ntotal, dtype=np.int64)
    stored_at[index.partition.order] = np.arange(index.ntotal)
    return vectors[stored_at[start:stop]]


def ivf_subset(index: Any, start: int, stop: int) -> Any:
    """An IVF index with ``index``'s trained quantizer (and PQ codebooks) holding the
    entries of ids ``[start, stop)``, with their ids: list for list, code for code, what
    ``index`` holds of them. ``index`` may map its lists from a file."""
    faiss = require_faiss()
    source = faiss.downcast_index(faiss.extract_index_ivf(index))
    subset = _empty_like(faiss, source)
    source.copy_subset_to(subset, 0, start, stop)  # 0: the ids in [start, stop)
    return subset


def _empty_like(faiss: Any, source: Any) -> Any:
    """A trained, empty copy of an IVFFlat or IVFPQ index (faiss cannot clone mapped lists,
    so it is made from the trained parts)."""
    quantizer = faiss.clone_index(source.quantizer)
    if isinstance(source, faiss.IndexIVFPQ):
        empty = faiss.IndexIVFPQ(quantizer, source.d, source.nlist, source.pq.M,
                                 source.pq.nbits, source.metric_type)
        faiss.copy_array_to_vector(faiss.vector_to_array(source.pq.centroids),
                                   empty.pq.centroids)
        empty.by_residual = source.by_residual
        empty.use_precomputed_table = source.use_precomputed_table
        empty.is_trained = True
        empty.precompute_table()
    else:
        empty = faiss.IndexIVFFlat(quantizer, source.d, source.nlist, source.metric_type)
        empty.is_trained = True
    empty.own_fields = True
    quantizer.this.disown()
    return empty


def _result(future: Any, shard: Shard, total: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        return future.result()
    except Exception as err:
        raise ShardError(f"{shard.describe(total)} failed: {type(err).__name__}: {err}",
                         ) from err


def _blas_limit(shards: list[Shard]) -> Any:
    """One BLAS limit around concurrent CPU shards: each exact shard limits BLAS to one
    thread while it searches, and limits entered and left by several threads at once
    would otherwise restore each other's settings out of order."""
    on_cpu = any(shard.device is None and not isinstance(shard.search, IVFSearch)
                 for shard in shards)
    return single_threaded_blas() if on_cpu and len(shards) > 1 else contextlib.nullcontext()
