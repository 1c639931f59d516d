"""Exact (brute-force) k-NN search on numpy or cupy arrays.

This is gpuknn's ``faiss.Flat``: a tiled GEMM followed by the pruned top-k of
:mod:`gpuknn.search.topk`. Queries and base vectors are cut into tiles small enough to
stay in cache (or, on a GPU, to bound device memory), each tile yields its own
top k, and the tiles' candidates are merged.

Ranking uses the cheap surrogate ``|x|^2 - 2 <q, x>`` for L2 and ``-<q, x>`` for
inner products. A few more than k candidates are kept; their distances are then
recomputed directly from the vectors (no cancellation) and re-sorted, so returned
distances are accurate even for near-duplicate vectors with large norms. Rows where
the surrogate's rounding error could have dropped a true neighbour
(:mod:`gpuknn.search.rounding`) are searched again in float64, so the answer is exact.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn._backend import to_host, usable_cores
from gpuknn.metrics import from_scores
from gpuknn.search import partition as partition_module
from gpuknn.search.base import RowsOfVectors, SearchBase
from gpuknn.search.rounding import float64_top_k, gamma
from gpuknn.search.tiling import GPU_QUERY_CHUNK, MERGE_TILES, block_width, default_tile_bytes
from gpuknn.search.topk import candidates_for, merge_k, select_k

log = logging.getLogger(__name__)

QUERY_CHUNK = 256
# Queries per pass of a cluster-pruned search (bounds its candidate lists).
PARTITION_CHUNK = 4096
# Query chunks that share each base block's scaled rows (one pass of the base for them).
GROUP_CHUNKS = 8
# Elements of the (rows, k, d) gather used to recompute the winners' distances.
RECOMPUTE_BUDGET = 1 << 24


def _merged(values: list[Any], columns: list[Any], keep: int, xp: ModuleType,
            ) -> tuple[Any, Any]:
    """The best ``keep`` of per-tile candidate lists, by (value, column): the same whether
    merged at once or a few tiles at a time."""
    if len(values) == 1:
        return values[0], columns[0]
    values, columns = xp.concatenate(values, axis=1), xp.concatenate(columns, axis=1)
    return merge_k(values, columns, min(keep, values.shape[1]), xp=xp)


class ExactSearch(RowsOfVectors):
    """Brute-force search over a fixed set of base vectors.

    Parameters
    ----------
    vectors : array of shape (n_base, dim), float32
        Base vectors, on the device of ``xp``. Cosine callers normalise first.
    metric : {"L2", "INNER_PRODUCT", "COSINE"}
        ``COSINE`` is searched as an inner product.
    xp : module
        ``numpy`` or ``cupy``.
    tile_bytes : int, optional
        Upper bound on the memory of one score tile; default ``$GPUKNN_TILE_MB`` if set,
        else 16 MiB on the CPU (stays in cache) and 1 GiB on a GPU. Besides the tile, a
        search holds the base once, its norms (4 bytes a row) and one block of scaled
        base rows (:func:`gpuknn.search.tiling.device_bytes`): a 10M x 128 base takes 6.4 GB
        on a GPU.
    partition : {"auto", "never", "always"} or ClusterPartition
        Cluster pruning (:mod:`gpuknn.search.partition`, L2 on the CPU with faiss installed):
        ``"auto"`` builds it for large bases and keeps it only where it pays off on the
        data, ``"always"`` builds it whatever the size, ``"never"`` searches by brute force;
        a ``ClusterPartition`` (a stored one, of these vectors) is used as it is, with no
        k-means. A partitioned base is stored cluster by cluster: a copy of ``vectors``
        in that order, or ``vectors`` itself reordered with ``in_place``.
    stored : dict of arrays, optional
        :meth:`SearchBase.to_arrays` of these vectors, read back from a model file: the
        centre, norms and rounding bound are then not computed again. With a
        ``ClusterPartition``, ``vectors`` and these arrays are in its order, as a model
        file stores them.
    in_place : bool
        The caller gives ``vectors`` up (training does): a partitioned base is reordered
        in place rather than copied.
    """

    def __init__(self, vectors: Any, metric: str, *, xp: ModuleType = np,
                 tile_bytes: int | None = None,
                 partition: str | partition_module.ClusterPartition = "auto",
                 stored: dict[str, np.ndarray] | None = None, in_place: bool = False):
        self.xp = xp
        self.metric = metric
        self.tile_bytes = int(tile_bytes) if tile_bytes is not None else default_tile_bytes(xp)
        # The base is held once, as given (a float32 array is not copied; a model file's
        # is a read-only map); each tile's scaled rows are made when a search needs them.
        vectors = _as_float32(vectors, xp)
        in_place = in_place and xp is np and vectors.flags.writeable
        self._partition = None
        if isinstance(partition, partition_module.ClusterPartition):
            if self._use_stored(partition, vectors, stored, in_place=in_place):
                return
            partition = "auto"
        self._base = SearchBase(vectors, metric, xp=xp, stored=stored)
        if metric == "L2" and xp is np and partition != "never":
            self._partition = _partition(self._base, always=partition == "always")
        if self._partition is not None:  # each cluster one block: the rows in its order
            self._base = self._base.in_order(self._partition.order, in_place=in_place)

    def _use_stored(self, partition: partition_module.ClusterPartition, vectors: Any,
                    stored: dict[str, np.ndarray] | None, *, in_place: bool) -> bool:
        """Search through a stored partition; False where it was made for another centre
        of a base in sample order (it is built again then).

        Raises
        ------
        ValueError
            For a search that takes no partition (inner products, a GPU), or stored
            arrays whose centre is not the partition's (the rows are in its order then,
            so it cannot be built again).
        """
        if self.metric != "L2" or self.xp is not np:
            raise ValueError("a cluster partition is for L2 search on the CPU")
        ordered = stored is not None  # a model file's: stored in the partition's order
        base = SearchBase(vectors, self.metric, xp=self.xp, stored=stored,
                          order=partition.order if ordered else None)
        if partition.center is not None and not np.array_equal(partition.center,
                                                               base.center):
            if ordered:
                raise ValueError("the stored cluster partition and norms disagree on the "
                                 "base's centre")
            log.warning("the stored cluster partition was made for another centre of the "
                        "base: building it again")
            return False
        self._partition = partition
        self._base = base if ordered else base.in_order(partition.order, in_place=in_place)
        return True

    @property
    def vectors(self) -> Any:
        """The base vectors, (n, d) float32: in their rows' order, or cluster by cluster
        (the partition's ``order``) where the search is partitioned."""
        return self._base.vectors

    @property
    def partitioned(self) -> bool:
        """Whether searches use cluster pruning."""
        return self._partition is not None

    @property
    def partition(self) -> partition_module.ClusterPartition | None:
        """The cluster partition searches use, if any (a model file stores it)."""
        return self._partition

    @property
    def center(self) -> Any:
        """The whole-number centre an L2 base is shifted by (None for inner products)."""
        return self._base.center

    @property
    def base(self) -> SearchBase:
        """The base with what is derived from it once (a model file stores it)."""
        return self._base

    def example_vector(self) -> np.ndarray:
        """One base vector, (dim,) float32 on the host: a query that is cheap to answer
        (a pruned search scans little around it)."""
        return np.asarray(to_host(self.vectors[:1]), dtype=np.float32)[0]

    def search(self, queries: Any, k: int) -> tuple[Any, Any]:
        """The k nearest base vectors of each query.

        Parameters
        ----------
        queries : array of shape (n_queries, dim), float32
        k : int
            ``1 <= k <= ntotal``.

        Returns
        -------
        distances : array of shape (n_queries, k), float32
            In the convention of :mod:`gpuknn.metrics`, nearest first.
        positions : array of shape (n_queries, k), int64
            Rows of ``vectors``; ties are broken by the smaller row.
        """
        scores, positions = self.ranked(queries, k)
        return from_scores(scores, self.metric, xp=self.xp), positions

    def ranked(self, queries: Any, k: int, *, nprobe: int | None = None,
               ) -> tuple[Any, Any]:
        """:meth:`search`'s answer before its conversion: the ranking scores (squared L2
        distance or negated inner product, float32, ascending; ties by the smaller
        row), which shards of one base are merged on. ``nprobe`` is unused (an IVF
        index's :meth:`~gpuknn.search.faiss_index.IVFSearch.ranked` takes it)."""
        xp = self.xp
        queries = xp.ascontiguousarray(xp.asarray(queries), dtype=xp.float32)
        n_queries = queries.shape[0]
        scores = xp.empty((n_queries, k), dtype=xp.float32)
        positions = xp.empty((n_queries, k), dtype=xp.int64)
        step = (PARTITION_CHUNK if self._partition is not None
                else QUERY_CHUNK if xp is np else GPU_QUERY_CHUNK)
        chunks = [slice(s, min(s + step, n_queries)) for s in range(0, n_queries, step)]

        center = self._base.center
        ranked = queries - center if center is not None else queries

        def run(group: list[slice]) -> None:
            if self._partition is not None:
                found = [self._pruned_candidates(queries[group[0]], ranked[group[0]], k)]
            else:
                found = self._tile_candidates([ranked[chunk] for chunk in group], k)
            for chunk, (values, columns) in zip(group, found, strict=True):
                scores[chunk], positions[chunk] = self._finalize(
                    queries[chunk], ranked[chunk], values, columns, k)

        if self._partition is not None:
            # Pruned search is many small numpy calls under the GIL: one thread, and small
            # single-threaded GEMMs (waking BLAS threads for each would cost more).
            with single_threaded_blas():
                for chunk in chunks:
                    run([chunk])
            return scores, positions
        workers = usable_cores() if xp is np else 1
        # A group of chunks shares each base block's scaled rows (made once per group).
        size = max(1, min(GROUP_CHUNKS, -(-len(chunks) // workers)))
        groups = [chunks[start:start + size] for start in range(0, len(chunks), size)]
        if workers < 2 or len(groups) < 2:
            for group in groups:
                run(group)
            return scores, positions
        # The top-k half of the work is single-threaded numpy: run one group per core,
        # each with a single-threaded BLAS, instead of one chunk on a multi-threaded BLAS.
        with single_threaded_blas(), ThreadPoolExecutor(min(workers, len(groups))) as pool:
            list(pool.map(run, groups))
        return scores, positions

    def _block_width(self, n_rows: int) -> int:
        return block_width(n_rows, self.dim, self.tile_bytes)

    def _pruned_candidates(self, queries: Any, ranked: Any, k: int) -> tuple[Any, Any]:
        """The partition's k winners, scored by :meth:`_pair_scores`."""
        return self._partition.candidates(
            ranked, k, self._base, lambda which, rows: self._pair_scores(queries, which, rows))

    def _tile_candidates(self, chunks: list[Any], k: int) -> list[tuple[Any, Any]]:
        """Per-tile top candidates of the surrogate scores of each chunk of (centred)
        queries, merged into one list per chunk; each base block is scaled once for all."""
        xp = self.xp
        width = self._block_width(max(chunk.shape[0] for chunk in chunks))
        keep = candidates_for(k)
        found = [([], []) for _ in chunks]
        buffer = xp.empty(max(chunk.shape[0] for chunk in chunks) * width, dtype=xp.float32)
        for begin in range(0, self.ntotal, width):
            end = min(begin + width, self.ntotal)
            scaled = self._base.scaled(slice(begin, end)).T
            norms = None if self._base.sq_norms is None else self._base.sq_norms[begin:end]
            for chunk, (values, columns) in zip(chunks, found, strict=True):
                out = buffer[:chunk.shape[0] * (end - begin)].reshape(chunk.shape[0], -1)
                scores = xp.matmul(chunk, scaled, out=out)
                tile_values, tile_columns = select_k(scores, min(keep, end - begin), xp=xp,
                                                     column_offsets=norms)
                values.append(tile_values)
                columns.append(tile_columns + begin)
                if len(values) > MERGE_TILES:  # bounds the lists of a large base
                    merged = _merged(values, columns, keep, xp)
                    values[:], columns[:] = [merged[0]], [merged[1]]
        return [_merged(values, columns, keep, xp) for values, columns in found]

    def _finalize(self, queries: Any, ranked: Any, values: Any, columns: Any,
                  k: int) -> tuple[Any, Any]:
        """Recompute candidate distances exactly, re-rank and re-search the rows in doubt:
        the ranking scores of the k winners."""
        xp = self.xp
        if self._partition is not None:  # already the k best, scored by _pair_scores
            exact, winners = values, columns
        else:
            exact, winners = merge_k(self._exact_scores(queries, columns), columns, k, xp=xp)
        if self._partition is None and columns.shape[1] < self.ntotal:
            bound = self._base.bound
            doubt = xp.flatnonzero(bound.in_doubt(ranked, values[:, -1], exact[:, -1], xp=xp))
            if doubt.size:
                exact[doubt], winners[doubt] = self._research(queries[doubt], k)
        return exact, winners

    def _research(self, queries: Any, k: int) -> tuple[Any, Any]:
        """The k winners of rows in doubt, by (float32 pair score, row) as every other
        row's are ranked. Candidates are chosen in float64 with a margin, widened until
        no row outside it could, within float32's rounding, reach the k-th winner (near
        ties chosen in float64 alone would follow float64's order, not the ranking's)."""
        xp = self.xp
        scores = xp.empty((queries.shape[0], k), dtype=xp.float32)
        rows = xp.empty((queries.shape[0], k), dtype=xp.int64)
        todo, take = xp.arange(queries.shape[0]), min(candidates_for(k), self.ntotal)
        while todo.size:
            edge, candidates = float64_top_k(self.vectors, self._base.center, queries[todo],
                                             take, self.metric, xp=xp)
            best, winners = merge_k(self._exact_scores(queries[todo], candidates), candidates,
                                    k, xp=xp)
            scores[todo], rows[todo] = best, winners
            if take == self.ntotal:
                break
            kth, edge = best[:, -1].astype(xp.float64), edge[:, -1].astype(xp.float64)
            todo = todo[edge - self._pair_slack(queries[todo], kth, edge) <= kth]
            take = min(4 * take, self.ntotal)
        return scores, rows

    def _pair_slack(self, queries: Any, kth: Any, edge: Any) -> Any:
        """How far two float32 pair scores near ``kth`` and ``edge`` can be off, together
        (and ``edge``'s own rounding to float32): (n_rows,) float64."""
        xp, spread = self.xp, 4 * gamma(self.dim + 2)
        if self.metric == "L2":
            return spread * (xp.abs(kth) + xp.abs(edge))
        q_norm = xp.sqrt((queries.astype(xp.float64) ** 2).sum(axis=1))
        return spread * q_norm * self._base.bound.radius + spread * xp.abs(edge)

    def _pair_scores(self, queries: Any, which: Any, rows: Any) -> Any:
        """Direct squared L2 (or negated inner product) of each pair (``queries[which[i]]``,
        base row ``rows[i]``): (n_pairs,) float32. The one scorer of the finalists, for the
        tiles and the partition alike, so that both rank by the same values."""
        out = self.xp.empty(len(rows), dtype=self.xp.float32)
        step = max(1, RECOMPUTE_BUDGET // max(self.dim, 1))
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            neighbours, query = self.vectors[rows[part]], queries[which[part]]
            if self.metric == "L2":
                diff = neighbours - query
                out[part] = (diff * diff).sum(axis=1)
            else:
                out[part] = -(neighbours * query).sum(axis=1)
        return out

    def _exact_scores(self, queries: Any, columns: Any) -> Any:
        """:meth:`_pair_scores` of every query with each of its candidates: (n, k) float32."""
        n_rows, k = columns.shape
        which = self.xp.repeat(self.xp.arange(n_rows), k)
        return self._pair_scores(queries, which, columns.reshape(-1)).reshape(n_rows, k)


def _partition(base: SearchBase, *, always: bool) -> partition_module.ClusterPartition | None:
    """The cluster partition of ``base`` for pruning, or None where it would not pay."""
    found = partition_module.build(base, min_rows=1 if always else partition_module.MIN_ROWS)
    if found is None:
        return None
    scanned = partition_module.probe(found, base)
    keep = always or scanned <= partition_module.MAX_SCANNED_FRACTION
    log.info("exact search: %d k-means clusters; a probe scans %.1f%% of the base: %s",
             found.n_clusters, 100 * scanned, "pruning" if keep else "brute force instead")
    return found if keep else None


def _as_float32(vectors: Any, xp: ModuleType) -> Any:
    """``vectors`` as a C-ordered float32 array on ``xp``'s device, copied only if needed
    (a read-only or unaligned view is kept as it is: nothing writes to the base)."""
    vectors = xp.asarray(vectors)  # cupy.ascontiguousarray takes device arrays only
    if vectors.dtype == xp.float32 and vectors.flags.c_contiguous:
        return vectors
    return xp.ascontiguousarray(vectors, dtype=xp.float32)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController  # noqa: PLC0415 - only when searching

    return ThreadpoolController()


def single_threaded_blas():
    """Limit BLAS to one thread (process-wide) for the duration of a ``with`` block."""
    return _blas_controller().limit(limits=1, user_api="blas")



