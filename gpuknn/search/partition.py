"""Cluster pruning for exact L2 search on the CPU.

A brute-force query streams every base vector through memory. When the base has
structure (real data nearly always has), most of it provably cannot hold a
neighbour. :class:`ClusterPartition` splits the base into k-means clusters (faiss's
``Kmeans``) and keeps for each its centroid ``c`` and radius ``r`` (the largest
distance of a member to ``c``). For a query ``q``, no member of a cluster is nearer
than ``|q - c| - r``. Search then runs in two passes:

1. each query is scored against its nearest cluster (more if that one holds fewer
   than ``k`` vectors); the k-th best score bounds its k-th neighbour distance by
   ``tau``;
2. it is scored against every cluster whose lower bound does not exceed ``tau``,
   keeping only scores within the bound, and the k best by (score, row) are taken.

Nothing that could be among the k nearest is skipped, so the result is exact: the
same float32 ranking surrogate as the brute-force search (with a generous allowance
for its rounding in the bound), and ties to the smaller training row, as there. The
clusters are stored one after another, and each is scored in one GEMM against the
queries that need it (the base, held once by :class:`~gpuknn.search.base.SearchBase`,
is stored in that order).

A partition is kept only if it prunes on the data itself: at build time a sample of
base rows is searched, and if more than :data:`MAX_SCANNED_FRACTION` of the base
would be scanned the brute-force search is used instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gpuknn.search.rounding import gamma

if TYPE_CHECKING:
    from gpuknn.search.base import SearchBase

MIN_ROWS = 50_000
# About sqrt(n) * CLUSTER_SCALE clusters: fewer, larger clusters mean fewer GEMM calls
# but more vectors scanned per query.
CLUSTER_SCALE = 1.0
MAX_SCANNED_FRACTION = 0.4
PROBE_QUERIES = 64
PROBE_K = 10
# Relative slack on the pruning test, far above float64 rounding of the bounds.
BOUND_SLACK = 1e-6
# k-means trains on this many (sampled) rows per cluster; rows are then assigned in blocks.
TRAIN_ROWS_PER_CLUSTER = 64
ASSIGN_ROWS = 1 << 13


class ClusterPartition:
    """k-means clusters of a base, with centroids and radii.

    Parameters
    ----------
    order : ndarray of shape (n,), int64
    sizes : ndarray of shape (n_clusters,), int64
    centroids : ndarray of shape (n_clusters, d)
    radii : ndarray of shape (n_clusters,)

    Attributes
    ----------
    order : ndarray of shape (n,), int64
        Original row of each position in the cluster-by-cluster layout (members of a
        cluster keep their original order).
    bounds : ndarray of shape (n_clusters + 1,), int64
        Cluster ``j`` occupies positions ``bounds[j]:bounds[j + 1]`` of that layout.
    sizes : ndarray of shape (n_clusters,), int64
    centroids : ndarray of shape (n_clusters, d), float64
    radii : ndarray of shape (n_clusters,), float64
        Largest distance of a member to its centroid.
    center : ndarray of shape (d,), float32, or None
        The centre of the base it was made for, once read back from a model file.
    """

    def __init__(self, order: np.ndarray, sizes: np.ndarray, centroids: np.ndarray,
                 radii: np.ndarray):
        # int32 positions where they fit: 4 bytes a row less beside the base
        self.order = order.astype(np.int32 if len(order) < 2**31 else np.int64, copy=False)
        self.sizes = sizes
        self.bounds = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.centroids = centroids.astype(np.float64)
        self._centroid_sq = (self.centroids**2).sum(axis=1)
        self.radii = radii.astype(np.float64)
        self.center: np.ndarray | None = None  # set when read back: the base's centre then

    @classmethod
    def of_labels(cls, labels: np.ndarray, centroids: np.ndarray,
                  radii: np.ndarray) -> ClusterPartition:
        """The partition of a base whose row ``i`` lies in cluster ``labels[i]``."""
        return cls(np.argsort(labels, kind="stable").astype(np.int64),
                   np.bincount(labels, minlength=len(centroids)).astype(np.int64),
                   centroids, radii)

    def to_arrays(self, center: np.ndarray) -> dict[str, np.ndarray]:
        """The partition as arrays to store, with the ``center`` its base was centred on."""
        return {"order": self.order, "sizes": self.sizes, "centroids": self.centroids,
                "radii": self.radii, "center": np.asarray(center, dtype=np.float32)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n: int, dim: int) -> ClusterPartition:
        """A stored partition of a base of ``n`` x ``dim`` vectors, checked for consistency.

        Raises
        ------
        ValueError
            Saying which array does not fit: a permutation of the rows, sizes that add up
            to ``n``, centroids of ``dim`` columns, finite radii >= 0.
        """
        order, sizes = np.asarray(arrays["order"]), np.asarray(arrays["sizes"])
        centroids, radii = np.asarray(arrays["centroids"]), np.asarray(arrays["radii"])
        n_clusters = len(sizes)
        if order.shape != (n,) or order.dtype.kind not in "iu" or \
                np.bincount(np.clip(order, 0, n), minlength=n + 1)[:n].min(initial=1) != 1:
            raise ValueError(f"order must be a permutation of the {n} rows")
        if sizes.dtype.kind not in "iu" or sizes.min(initial=0) < 0 or sizes.sum() != n:
            raise ValueError(f"cluster sizes must be >= 0 and add up to {n}")
        if centroids.shape != (n_clusters, dim) or radii.shape != (n_clusters,):
            raise ValueError(f"centroids must be {n_clusters} x {dim} and radii {n_clusters}")
        if not (np.isfinite(centroids).all() and np.isfinite(radii).all() and
                radii.min(initial=0.0) >= 0):
            raise ValueError("centroids and radii must be finite, radii >= 0")
        partition = cls(order, sizes.astype(np.int64), centroids, radii)
        partition.center = np.asarray(arrays["center"], dtype=np.float32)
        return partition

    @property
    def n_clusters(self) -> int:
        """Number of clusters."""
        return len(self.centroids)

    def candidates(self, ranked: np.ndarray, k: int, base: SearchBase,
                   rescore: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest base rows of every query, with their recomputed scores.

        Parameters
        ----------
        ranked : ndarray of shape (n_queries, d), float32
            Queries centred like the base (the space of the centroids).
        k : int
        base : SearchBase
        rescore : callable
            ``rescore(queries, at)``: the directly computed squared distance of each pair
            (query number, base row), float32, as the brute-force search computes it; ``at``
            indexes ``base.vectors`` (the rows, or their positions in ``base.order``).

        Returns
        -------
        values : ndarray of shape (n_queries, k), float32
            Squared distances, from ``rescore``.
        rows : ndarray of shape (n_queries, k), int64
            Ties broken by the smaller row.
        """
        centre_distance = self._centre_distances(ranked)
        threshold = self._first_threshold(ranked, centre_distance, k, base)
        needed = self._needed(ranked, centre_distance, threshold)
        return self._scan(ranked, needed, threshold, k, base, rescore=rescore)

    def scanned_fraction(self, ranked: np.ndarray, k: int, base: SearchBase) -> float:
        """Share of the base that :meth:`candidates` scans for these queries."""
        centre_distance = self._centre_distances(ranked)
        threshold = self._first_threshold(ranked, centre_distance, k, base)
        needed = self._needed(ranked, centre_distance, threshold)
        return float((needed @ self.sizes).sum() / (len(ranked) * len(self.order)))

    def _first_threshold(self, ranked, centre_distance, k: int, base) -> np.ndarray:
        """Per query, a surrogate score that at least k base vectors reach: the k-th
        smallest score in its nearest clusters (until they hold k), plus rounding slack.

        The surrogate is ``|x|^2 - 2<q, x>``, the squared distance less ``|q|^2``.
        """
        nearest = centre_distance.argmin(axis=1)
        kth = np.empty(len(ranked), dtype=np.float64)
        small = self.sizes[nearest] < k
        large = np.flatnonzero(~small)
        by_cluster = large[np.argsort(nearest[large], kind="stable")]
        clusters, starts = np.unique(nearest[by_cluster], return_index=True)
        groups = np.split(by_cluster, starts[1:]) if len(clusters) else []
        for cluster, which in zip(clusters, groups, strict=True):
            block = self._scores(ranked[which], cluster, base)
            kth[which] = np.partition(block, k - 1, axis=1)[:, k - 1]
        for query in np.flatnonzero(small):  # rare: the nearest cluster holds fewer than k
            by_distance = np.argsort(centre_distance[query], kind="stable")
            held = np.cumsum(self.sizes[by_distance])
            clusters = by_distance[: int(np.searchsorted(held, k)) + 1]
            scores = np.concatenate([self._scores(ranked[query : query + 1], c, base)[0]
                                     for c in clusters])
            kth[query] = np.partition(scores, k - 1)[k - 1]
        return kth + self._slack(ranked, base)

    def _slack(self, ranked: np.ndarray, base: SearchBase) -> np.ndarray:
        """Twice a bound on the float32 rounding of a surrogate score (the threshold's own
        and a true neighbour's), at least a relative 1e-5."""
        query_norm = np.sqrt((ranked.astype(np.float64) ** 2).sum(axis=1))
        relative = max(1e-5, 2 * gamma(ranked.shape[1] + 2))
        return relative * (query_norm + base.bound.radius) ** 2 + 1e-30

    def _needed(self, ranked, centre_distance, threshold) -> np.ndarray:
        """(n_queries, n_clusters) bool: clusters whose lower bound ``|q - c| - r`` does
        not exceed the query's distance bound ``tau`` (from the threshold)."""
        query_sq = (ranked.astype(np.float64) ** 2).sum(axis=1)
        tau = np.sqrt(np.maximum(threshold + query_sq, 0.0))
        return (centre_distance - self.radii) <= (tau * (1 + BOUND_SLACK))[:, None]

    def _scan(self, ranked, needed, threshold, k: int, base, *,
              rescore) -> tuple[np.ndarray, np.ndarray]:
        """Score every query against its needed clusters, keep the rows within its
        threshold, recompute their distances and take the k best by (distance, row)."""
        kept_queries, kept_values, kept_rows = [], [], []
        clusters, query_ids = np.nonzero(needed.T)
        starts = np.searchsorted(clusters, np.arange(self.n_clusters + 1))
        for cluster in np.flatnonzero(np.diff(starts)):
            which = query_ids[starts[cluster]:starts[cluster + 1]]
            block = self._scores(ranked[which], cluster, base)
            hit_query, hit_member = np.nonzero(block <= threshold[which][:, None])
            positions = self.bounds[cluster] + hit_member
            rows = self.order[positions]
            kept_queries.append(which[hit_query])
            kept_values.append(rescore(which[hit_query], rows if base.order is None else
                                       positions))
            kept_rows.append(rows)
        queries = np.concatenate(kept_queries)
        values, rows = np.concatenate(kept_values), np.concatenate(kept_rows)
        order = np.lexsort((rows, values, queries))
        first = np.searchsorted(queries[order], np.arange(len(ranked)))
        counts = np.diff(np.append(first, len(order)))
        if counts.min() < k:
            raise AssertionError("cluster pruning kept fewer than k candidates")
        picked = order[first[:, None] + np.arange(k)]
        return values[picked], rows[picked]

    def _scores(self, ranked: np.ndarray, cluster: int, base: SearchBase) -> np.ndarray:
        """Surrogate scores (n_queries, cluster size), float32, against one cluster (its
        rows scaled into a scratch block)."""
        members = slice(self.bounds[cluster], self.bounds[cluster + 1])
        if base.order is None:  # a base in its rows' order (while probing): gather
            members = self.order[members]
        block = ranked @ base.scaled(members).T
        block += base.sq_norms[members]
        return block

    def _centre_distances(self, queries: np.ndarray) -> np.ndarray:
        q = queries.astype(np.float64)
        squared = (q**2).sum(axis=1)[:, None] + self._centroid_sq - 2.0 * (q @ self.centroids.T)
        return np.sqrt(np.maximum(squared, 0.0))


def build(base: SearchBase, *, seed: int = 0,
          min_rows: int = MIN_ROWS) -> ClusterPartition | None:
    """k-means clusters of a (centred) L2 base; None for a small base (< ``min_rows``)
    or without faiss. Check :func:`probe` before using it.

    k-means trains on a seeded subsample of :data:`TRAIN_ROWS_PER_CLUSTER` rows per
    cluster, then the rows are assigned a block at a time: no copy of the base is made.
    """
    n, dim = base.shape
    if n < max(min_rows, 2):
        return None
    try:
        from gpuknn.search.faiss_index import require_faiss  # noqa: PLC0415 - optional dependency

        faiss = require_faiss()
    except ImportError:
        return None
    n_clusters = int(min(4096, n // 2, max(16, round(math.sqrt(n) * CLUSTER_SCALE))))
    kmeans = faiss.Kmeans(dim, n_clusters, niter=10, seed=seed + 1,
                          max_points_per_centroid=TRAIN_ROWS_PER_CLUSTER, verbose=False)
    train = np.random.default_rng(seed).choice(
        n, size=min(n, TRAIN_ROWS_PER_CLUSTER * n_clusters), replace=False)
    kmeans.train(base.centred(np.sort(train)))
    labels, radii = np.empty(n, dtype=np.int64), np.zeros(n_clusters)
    for start in range(0, n, ASSIGN_ROWS):
        block = base.centred(slice(start, start + ASSIGN_ROWS))
        _, nearest = kmeans.index.search(block, 1)
        nearest = nearest.ravel().astype(np.int64)
        labels[start:start + len(block)] = nearest
        offsets = block.astype(np.float64)
        offsets -= kmeans.centroids[nearest]
        np.maximum.at(radii, nearest, np.sqrt(np.einsum("ij,ij->i", offsets, offsets)))
    return ClusterPartition.of_labels(labels, kmeans.centroids, radii)


def probe(partition: ClusterPartition, base: SearchBase, *, seed: int = 0) -> float:
    """Share of the base scanned when searching base rows as queries (keep the partition
    if it is at most :data:`MAX_SCANNED_FRACTION`)."""
    n = len(partition.order)
    probe = np.random.default_rng(seed).choice(n, size=min(PROBE_QUERIES, n), replace=False)
    queries = base.centred_rows(probe[:, None])[:, 0, :].astype(np.float32)
    return partition.scanned_fraction(queries, PROBE_K, base)
