"""Reference k-NN in float64 and tie-aware comparison helpers for the tests."""

from __future__ import annotations

import numpy as np

# Relative gap below which two float64 reference distances count as tied: float32
# computation of the same distances can order them either way.
TIE_RTOL = 1e-5


def reference_scores(X: np.ndarray, Q: np.ndarray, metric: str) -> np.ndarray:
    """Full (n_queries, n_base) float64 scores where smaller is nearer."""
    X, Q = X.astype(np.float64), Q.astype(np.float64)
    if metric == "COSINE":
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-300)
        Q = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-300)
    if metric == "L2":
        diff_sq = (Q * Q).sum(1)[:, None] + (X * X).sum(1)[None, :] - 2 * Q @ X.T
        return np.maximum(diff_sq, 0)
    return -(Q @ X.T)


def reference_knn(X, Q, k, metric="L2"):
    """Exact neighbours by float64 brute force.

    Returns
    -------
    distances : (n_queries, k) in the gpuknn convention (Euclidean, or similarity)
    indices : (n_queries, k)
    clear : (n_queries,) bool, True where the k-th and (k+1)-th scores are not tied
    """
    scores = reference_scores(X, Q, metric)
    order = np.argsort(scores, axis=1, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    kth = sorted_scores[:, k - 1]
    if k < scores.shape[1]:
        gap = np.abs(sorted_scores[:, k] - kth)
        clear = gap > TIE_RTOL * np.maximum(np.abs(kth), 1e-12)
    else:
        clear = np.ones(len(Q), dtype=bool)
    top = sorted_scores[:, :k]
    distances = np.sqrt(top) if metric == "L2" else -top
    return distances, order[:, :k], clear


def assert_same_neighbours(indices, expected_indices, clear, min_clear_fraction=0.5):
    """Neighbour sets must be equal on every row without a tie at the k-th neighbour."""
    assert clear.mean() >= min_clear_fraction, f"only {clear.mean():.2%} rows without ties"
    got = np.sort(np.asarray(indices)[clear], axis=1)
    want = np.sort(np.asarray(expected_indices)[clear], axis=1)
    mismatched = np.flatnonzero((got != want).any(axis=1))
    assert mismatched.size == 0, (
        f"{mismatched.size} of {clear.sum()} untied rows differ; first row {mismatched[0]}: "
        f"{got[mismatched[0]]} vs {want[mismatched[0]]}")


def recall_at_k(indices, exact_indices) -> float:
    """Mean fraction of the exact k neighbours that were found."""
    indices, exact_indices = np.asarray(indices), np.asarray(exact_indices)
    hits = [np.intersect1d(a, b).size for a, b in zip(indices, exact_indices, strict=True)]
    return float(np.sum(hits) / exact_indices.size)


def assert_valid_knn(X, Q, indices, k, metric="L2", rtol=1e-5):
    """Every row is a correct k-NN answer, ties allowed: the float64 scores of the returned
    neighbours equal the k smallest reference scores, in order, and no row repeats an index."""
    indices = np.asarray(indices)
    scores = reference_scores(X, Q, metric)
    best = np.sort(scores, axis=1)[:, :k]
    got = np.take_along_axis(scores, indices, axis=1)
    scale = np.maximum(np.abs(best).max(axis=1, keepdims=True), 1e-12)
    bad = np.flatnonzero((np.abs(got - best) > rtol * scale).any(axis=1))
    assert bad.size == 0, (f"{bad.size} of {len(Q)} rows are not the k nearest; first row "
                           f"{bad[0]}: scores {got[bad[0]]} vs best {best[bad[0]]}")
    assert all(len(set(row)) == len(row) for row in indices.tolist()), "repeated neighbours"
