"""Cluster-pruned exact search: the same answers as brute force, with most of the base skipped.

``partition="always"`` forces the partition on small sets so that every case runs in
seconds; ``"never"`` is the brute-force search it must equal, row for row.
"""

from __future__ import annotations

import numpy as np
import pytest
from _compare import assert_same_neighbours, assert_valid_knn, reference_knn

from gpuknn.search import partition
from gpuknn.search.exact import ExactSearch

pytest.importorskip("faiss")  # the partition's k-means is faiss's


def pruned_and_brute(X: np.ndarray) -> tuple[ExactSearch, ExactSearch]:
    pruned = ExactSearch(X, "L2", partition="always")
    assert pruned.partitioned
    return pruned, ExactSearch(X, "L2", partition="never")


def assert_identical(pruned: ExactSearch, brute: ExactSearch, Q: np.ndarray, k: int) -> None:
    got_distances, got_positions = pruned.search(Q, k)
    want_distances, want_positions = brute.search(Q, k)
    np.testing.assert_array_equal(got_positions, want_positions)
    np.testing.assert_array_equal(got_distances, want_distances)


@pytest.mark.parametrize("k", [1, 10, 100])
def test_letter_integer_data_with_many_ties(letter, k):
    """Integer features: exact distance ties are everywhere, and go to the smaller row."""
    X, _, Q, _ = letter
    pruned, brute = pruned_and_brute(X)
    assert_identical(pruned, brute, Q[:600], k)
    _, want_positions, clear = reference_knn(X, Q[:600], k)
    positions = pruned.search(Q[:600], k)[1]
    # Most rows tie at the k-th distance here (63 % at k=10, 88 % at k=100): those are checked for
    # validity (every neighbour at most the k-th distance), the rest for equality.
    assert_same_neighbours(positions, want_positions, clear, min_clear_fraction=0.1)
    assert_valid_knn(X, Q[:600], positions, k)


def test_mnist_float_data(mnist):
    X, _, Q, _ = mnist
    X, Q = X.astype(np.float32), Q[:300].astype(np.float32)
    pruned, brute = pruned_and_brute(X)
    assert_identical(pruned, brute, Q, 10)
    assert_valid_knn(X, Q, pruned.search(Q, 10)[1], 10)


def test_k_larger_than_the_nearest_cluster(letter):
    """About 126 clusters of about 127 rows: k=400 needs several clusters for the bound."""
    X, _, Q, _ = letter
    pruned, brute = pruned_and_brute(X)
    assert pruned._partition.sizes.min() < 400
    assert_identical(pruned, brute, Q[:50], 400)


def test_degenerate_bases(rng):
    duplicates = np.repeat(rng.integers(0, 3, (40, 5)).astype(np.float32), 25, axis=0)
    pruned, brute = pruned_and_brute(duplicates)  # 1,000 rows, 40 distinct, radius 0
    assert_identical(pruned, brute, duplicates[::37], 30)
    far = rng.standard_normal((5, 5)).astype(np.float32) * 1e4  # outside every cluster
    assert_identical(pruned, brute, far, 7)


def clustered(rng, n: int, dim: int, n_centres: int) -> np.ndarray:
    centres = rng.standard_normal((n_centres, dim)) * 100
    return (centres[rng.integers(0, n_centres, n)] + rng.standard_normal((n, dim))).astype(
        np.float32)


def test_pruning_skips_most_of_a_clustered_base(rng):
    data = clustered(rng, 60_200, 16, 300)
    X, Q = data[:60_000], data[60_000:]
    pruned = ExactSearch(X, "L2")  # "auto": large enough, and it pays off
    assert pruned.partitioned
    fraction = pruned.partition.scanned_fraction(Q - pruned.center, 10, pruned.base)
    # Centres about 100 apart with unit spread: a query's neighbours are in its own blob,
    # and only the few clusters cut from that blob pass the bound.
    assert fraction < 0.05
    assert_identical(pruned, ExactSearch(X, "L2", partition="never"), Q, 10)


def test_auto_declines_where_pruning_cannot_pay(rng, monkeypatch):
    """Gaussian noise in 64 dimensions has no structure: every bound passes."""
    monkeypatch.setattr(partition, "MIN_ROWS", 5_000)
    X = rng.standard_normal((8_000, 64)).astype(np.float32)
    assert not ExactSearch(X, "L2").partitioned
    assert ExactSearch(X, "L2", partition="always").partitioned


def test_small_bases_and_inner_products_are_not_partitioned(rng):
    X = clustered(rng, 2_000, 8, 20)
    assert not ExactSearch(X, "L2").partitioned  # below MIN_ROWS
    assert not ExactSearch(X, "INNER_PRODUCT", partition="always").partitioned
    assert not ExactSearch(X, "L2", partition="never").partitioned
