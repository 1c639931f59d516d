"""ExactSearch (gpuknn's faiss.Flat) against float64 brute force and faiss."""

from __future__ import annotations

import numpy as np
import pytest
from _compare import assert_same_neighbours, assert_valid_knn, reference_knn

from gpuknn import _backend
from gpuknn.metrics import normalize_rows, squared_norms
from gpuknn.search import exact, tiling
from gpuknn.search.exact import ExactSearch


@pytest.mark.parametrize("metric", ["L2", "INNER_PRODUCT", "COSINE"])
@pytest.mark.parametrize(
    ("n_base", "dim", "n_queries", "k"),
    [(1, 3, 2, 1), (500, 7, 33, 5), (3001, 33, 257, 10), (20000, 16, 700, 100)])
def test_exact_matches_float64_brute_force(xp, rng, metric, n_base, dim, n_queries, k):
    X = rng.standard_normal((n_base, dim)).astype(np.float32)
    Q = rng.standard_normal((n_queries, dim)).astype(np.float32)
    base, queries = (normalize_rows(X), normalize_rows(Q)) if metric == "COSINE" else (X, Q)
    search = ExactSearch(xp.asarray(base), metric, xp=xp, tile_bytes=1 << 20)
    distances, positions = search.search(xp.asarray(queries), k)
    want_distances, want_positions, clear = reference_knn(X, Q, k, metric)
    assert_same_neighbours(_backend.to_host(positions), want_positions, clear)
    assert_valid_knn(X, Q, _backend.to_host(positions), k, metric, rtol=1e-4)
    np.testing.assert_allclose(_backend.to_host(distances), want_distances, rtol=1e-4, atol=1e-4)


def test_exact_tiles_merge_across_base_blocks(rng, monkeypatch):
    # A tiny tile forces many base blocks and query chunks; results must not change.
    monkeypatch.setattr(exact, "QUERY_CHUNK", 7)
    X = rng.standard_normal((5000, 24)).astype(np.float32)
    Q = rng.standard_normal((50, 24)).astype(np.float32)
    small = ExactSearch(X, "L2", tile_bytes=4096).search(Q, 10)
    large = ExactSearch(X, "L2").search(Q, 10)
    np.testing.assert_array_equal(small[1], large[1])
    np.testing.assert_allclose(small[0], large[0], rtol=1e-6)


def test_candidate_lists_merged_early_keep_ties_in_row_order(rng, monkeypatch):
    """More tiles than MERGE_TILES: the lists are merged a few tiles at a time, and
    integer data full of distance ties gives exactly the answer of one merge."""
    X = rng.integers(0, 3, size=(9000, 4)).astype(np.float32)
    Q = rng.integers(0, 3, size=(40, 4)).astype(np.float32)
    once = ExactSearch(X, "L2", partition="never").search(Q, 25)
    monkeypatch.setattr(exact, "MERGE_TILES", 2)
    early = ExactSearch(X, "L2", tile_bytes=4096, partition="never").search(Q, 25)
    np.testing.assert_array_equal(early[1], once[1])
    np.testing.assert_array_equal(early[0], once[0])
    distances = ((X[once[1]] - Q[:, None, :]) ** 2).sum(axis=2)
    assert (np.diff(distances, axis=1) >= 0).all()
    tied = np.diff(distances, axis=1) == 0
    assert tied.any() and (np.diff(once[1], axis=1)[tied] > 0).all(), "ties: smaller row first"


def test_exact_ties_go_to_the_smaller_row(xp):
    X = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [5, 5]], dtype=np.float32)
    distances, positions = ExactSearch(xp.asarray(X), "L2", xp=xp).search(
        xp.asarray(np.zeros((1, 2), dtype=np.float32)), 3)
    assert _backend.to_host(positions).tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(_backend.to_host(distances), [[1, 1, 1]])


def test_exact_distances_are_accurate_for_near_duplicates(xp):
    # |x|^2 - 2<q,x> + |q|^2 cancels catastrophically here; the recomputed distances do not.
    X = np.full((3, 64), 1000.0, dtype=np.float32)
    X[1, 0] += 0.5
    X[2, 0] += 1.0
    distances, positions = ExactSearch(xp.asarray(X), "L2", xp=xp).search(xp.asarray(X[:1]), 3)
    assert _backend.to_host(positions).tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(_backend.to_host(distances), [[0.0, 0.5, 1.0]], atol=1e-6)


def test_exact_agrees_with_faiss_flat(letter):
    faiss = pytest.importorskip("faiss")
    X, _, Q, _ = letter
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(X)
    faiss_sq, faiss_ids = index.search(Q, 11)
    distances, positions = ExactSearch(X, "L2").search(Q, 10)
    clear = faiss_sq[:, 10] > faiss_sq[:, 9]
    assert_same_neighbours(positions, faiss_ids[:, :10], clear, min_clear_fraction=0.3)
    np.testing.assert_allclose(distances ** 2, faiss_sq[:, :10], rtol=1e-5)
    # Rows with ties: both answers are valid k-NN answers of the same distances.
    assert_valid_knn(X, Q, positions, 10)
    assert_valid_knn(X, Q, faiss_ids[:, :10], 10)


def test_tile_size_from_the_environment_changes_tiling_not_answers(xp, rng, monkeypatch):
    X = rng.standard_normal((5000, 24)).astype(np.float32)
    Q = rng.standard_normal((300, 24)).astype(np.float32)
    want = ExactSearch(xp.asarray(X), "L2", xp=xp, partition="never").search(xp.asarray(Q), 7)
    monkeypatch.setenv(tiling.TILE_VARIABLE, "0.05")
    small = ExactSearch(xp.asarray(X), "L2", xp=xp, partition="never")
    assert small.tile_bytes == int(0.05 * (1 << 20))
    assert small._block_width(len(Q)) < len(X)  # several base blocks, merged
    for got, expected in zip(small.search(xp.asarray(Q), 7), want, strict=True):
        np.testing.assert_array_equal(_backend.to_host(got), _backend.to_host(expected))


@pytest.mark.parametrize("value", ["0", "-3", "lots", "nan"])
def test_bad_tile_size_in_the_environment_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(tiling.TILE_VARIABLE, value)
    with pytest.raises(ValueError, match=r"\$GPUKNN_TILE_MB must be a positive number"):
        exact.default_tile_bytes(np)


def test_blockwise_squared_norms_equal_the_whole_array_ones(xp, rng):
    X = xp.asarray(rng.standard_normal((1000, 37)).astype(np.float32) * 100)
    got = squared_norms(X, xp=xp, block_rows=64)
    np.testing.assert_array_equal(_backend.to_host(got), _backend.to_host((X * X).sum(axis=1)))


def test_exact_where_float32_cannot_tell_the_neighbours_apart(xp, rng, monkeypatch):
    """Blobs far from the mean: |x|^2 ~ 1.6e5, so a float32 surrogate step (~0.016) is
    larger than some gaps between the k-th and (k+1)-th neighbour. Rows in doubt are
    searched again in float64 and the answer equals float64 brute force."""
    centres = rng.standard_normal((300, 16)) * 100
    data = (centres[rng.integers(0, 300, 60_200)] + rng.standard_normal((60_200, 16)))
    X, Q = data[:60_000].astype(np.float32), data[60_000:].astype(np.float32)
    researched = []
    real = exact.float64_top_k

    def counting(base, center, queries, k, metric, *, xp):
        researched.append(len(queries))
        return real(base, center, queries, k, metric, xp=xp)

    monkeypatch.setattr(exact, "float64_top_k", counting)
    search = ExactSearch(xp.asarray(X), "L2", xp=xp, partition="never")
    positions = _backend.to_host(search.search(xp.asarray(Q), 10)[1])
    _, want_positions, clear = reference_knn(X, Q, 10)
    assert_same_neighbours(positions, want_positions, clear, min_clear_fraction=0.9)
    assert sum(researched) > 0, "the data should leave some rows in doubt"
    assert sum(researched) < len(Q) // 2


def test_integer_data_is_never_in_doubt(rng, monkeypatch):
    """Whole numbers with small sums are computed exactly in float32: no re-search, and
    ties still go to the smaller row."""
    monkeypatch.setattr(exact, "float64_top_k", lambda *a, **kw: pytest.fail("re-searched"))
    X = rng.integers(0, 4, (3000, 8)).astype(np.float32)
    distances, positions = ExactSearch(X, "L2").search(X[:200], 20)
    want_distances, want_positions, _ = reference_knn(X, X[:200], 20)  # stable: ties in row order
    np.testing.assert_array_equal(positions, want_positions)
    np.testing.assert_array_equal(distances, want_distances.astype(np.float32))
