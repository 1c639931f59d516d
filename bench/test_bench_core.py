"""Micro-benchmarks of gpuknn's CPU building blocks, each beside a peer.

Timed only with ``--benchmark-enable`` (the project's pytest options pass
``--benchmark-disable``, so plain ``pytest bench/test_bench_core.py`` runs every
body once, as a smoke test that also checks each pair gives the same answer)::

    pytest bench/test_bench_core.py --benchmark-enable --benchmark-columns=min,median,ops

Each ``benchmark.group`` holds one gpuknn entry and its peer(s); compare within a
group only.
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.random_projection import GaussianRandomProjection

from gpuknn.model import predict
from gpuknn.model.reduction import FJLT, SignProjection
from gpuknn.sampling import ReservoirSampler
from gpuknn.search.exact import ExactSearch
from gpuknn.search.topk import select_k

SEED = 20240601
# Keep every benchmark short: the whole file runs in well under 30 s when enabled.
pytestmark = pytest.mark.benchmark(min_rounds=3, max_time=0.5, warmup=False)


def _rng(offset: int) -> np.random.Generator:
    return np.random.default_rng([SEED, offset])


# -- top-k selection ------------------------------------------------------------------------
TOPK_SHAPE, TOPK_K = (256, 16384), 10


@pytest.fixture(scope="module")
def score_tile() -> np.ndarray:
    return _rng(1).standard_normal(TOPK_SHAPE, dtype=np.float32)


def argpartition_sort(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The textbook numpy top-k: argpartition, then sort the k winners."""
    part = np.argpartition(scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(part, order, axis=1)


def test_select_k_gpuknn(benchmark, score_tile):
    benchmark.group = "topk 256x16384 k=10"
    values, columns = benchmark(select_k, score_tile, TOPK_K)
    peer_values, peer_columns = argpartition_sort(score_tile, TOPK_K)
    np.testing.assert_array_equal(values, peer_values)
    np.testing.assert_array_equal(columns, peer_columns)


def test_select_k_numpy_argpartition(benchmark, score_tile):
    benchmark.group = "topk 256x16384 k=10"
    values, _ = benchmark(argpartition_sort, score_tile, TOPK_K)
    assert values.shape == (TOPK_SHAPE[0], TOPK_K)


# -- exact search ---------------------------------------------------------------------------
SEARCH_N, SEARCH_D, SEARCH_Q, SEARCH_K = 20_000, 64, 500, 10


@pytest.fixture(scope="module")
def search_data() -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(2)
    base = rng.standard_normal((SEARCH_N, SEARCH_D), dtype=np.float32)
    queries = rng.standard_normal((SEARCH_Q, SEARCH_D), dtype=np.float32)
    return base, queries


def test_exact_search_gpuknn(benchmark, search_data):
    benchmark.group = "exact search N=20k d=64 Q=500 k=10"
    base, queries = search_data
    index = ExactSearch(base, "L2")
    distances, positions = benchmark(index.search, queries, SEARCH_K)
    flat = faiss.IndexFlatL2(SEARCH_D)
    flat.add(base)
    faiss_sq, faiss_positions = flat.search(queries, SEARCH_K)
    np.testing.assert_array_equal(np.sort(positions, axis=1), np.sort(faiss_positions, axis=1))
    np.testing.assert_allclose(distances**2, faiss_sq, rtol=1e-4)


def test_exact_search_faiss_flat(benchmark, search_data):
    benchmark.group = "exact search N=20k d=64 Q=500 k=10"
    base, queries = search_data
    flat = faiss.IndexFlatL2(SEARCH_D)
    flat.add(base)
    _, positions = benchmark(flat.search, queries, SEARCH_K)
    assert positions.shape == (SEARCH_Q, SEARCH_K)


# -- reservoir sampling ---------------------------------------------------------------------
SAMPLE_ROWS, SAMPLE_D, SAMPLE_SIZE, SAMPLE_BATCH = 100_000, 32, 50_000, 10_000


@pytest.fixture(scope="module")
def stream() -> tuple[np.ndarray, np.ndarray]:
    rng = _rng(3)
    return (rng.standard_normal((SAMPLE_ROWS, SAMPLE_D), dtype=np.float32),
            rng.integers(0, 10, SAMPLE_ROWS).astype(np.float32))


def reservoir(X: np.ndarray, y: np.ndarray) -> ReservoirSampler:
    """Stream 100k rows in 10k batches into a 50k sample (fills, then replaces)."""
    sampler = ReservoirSampler(SAMPLE_SIZE, seed=0)
    for start in range(0, X.shape[0], SAMPLE_BATCH):
        sampler.add(X[start : start + SAMPLE_BATCH], y[start : start + SAMPLE_BATCH])
    return sampler


def one_shot_sample(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Peer: a uniform sample without replacement drawn with the whole array in memory."""
    rows = np.sort(np.random.default_rng(0).choice(X.shape[0], SAMPLE_SIZE, replace=False))
    return X[rows], y[rows]


def test_reservoir_add_gpuknn(benchmark, stream):
    benchmark.group = "sample 100k x 32 -> 50k"
    sampler = benchmark(reservoir, *stream)
    features, _, ids = sampler.result()
    assert features.shape == (SAMPLE_SIZE, SAMPLE_D)
    np.testing.assert_array_equal(features, stream[0][ids])


def test_reservoir_numpy_choice(benchmark, stream):
    benchmark.group = "sample 100k x 32 -> 50k"
    features, _ = benchmark(one_shot_sample, *stream)
    assert features.shape == (SAMPLE_SIZE, SAMPLE_D)


# -- dimension reduction --------------------------------------------------------------------
REDUCE_ROWS, REDUCE_IN, REDUCE_OUT = 10_000, 256, 32
REDUCE_GROUP = "reduce 10k x 256 -> 32"


@pytest.fixture(scope="module")
def reduce_rows() -> np.ndarray:
    return _rng(4).standard_normal((REDUCE_ROWS, REDUCE_IN), dtype=np.float32)


def test_sign_projection_gpuknn(benchmark, reduce_rows):
    benchmark.group = REDUCE_GROUP
    projection = SignProjection.fit(REDUCE_IN, REDUCE_OUT, seed=0)
    out = benchmark(projection.apply, reduce_rows)
    assert out.shape == (REDUCE_ROWS, REDUCE_OUT)


def test_fjlt_gpuknn(benchmark, reduce_rows):
    benchmark.group = REDUCE_GROUP
    transform = FJLT.fit(REDUCE_IN, REDUCE_OUT, seed=0)
    out = benchmark(transform.apply, reduce_rows)
    assert out.shape == (REDUCE_ROWS, REDUCE_OUT)


def test_dense_matmul_numpy(benchmark, reduce_rows):
    benchmark.group = REDUCE_GROUP
    matrix = _rng(5).standard_normal((REDUCE_IN, REDUCE_OUT), dtype=np.float32)
    out = benchmark(np.matmul, reduce_rows, matrix)
    assert out.shape == (REDUCE_ROWS, REDUCE_OUT)


def test_gaussian_projection_sklearn(benchmark, reduce_rows):
    benchmark.group = REDUCE_GROUP
    projection = GaussianRandomProjection(REDUCE_OUT, random_state=0).fit(reduce_rows)
    out = benchmark(projection.transform, reduce_rows)
    assert out.shape == (REDUCE_ROWS, REDUCE_OUT)


# -- voting ---------------------------------------------------------------------------------
VOTE_ROWS, VOTE_K, VOTE_CLASSES = 100_000, 10, 26
VOTE_GROUP = "vote counts 100k x 10, 26 classes"


@pytest.fixture(scope="module")
def neighbour_classes() -> np.ndarray:
    return _rng(6).integers(0, VOTE_CLASSES, (VOTE_ROWS, VOTE_K))


def add_at_counts(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Peer: scatter-add with ``np.add.at``."""
    counts = np.zeros((classes.shape[0], n_classes), dtype=np.int64)
    np.add.at(counts, (np.arange(classes.shape[0])[:, None], classes), 1)
    return counts


def one_hot_counts(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Peer: compare against every class and sum (a (rows, k, classes) boolean)."""
    return (classes[:, :, None] == np.arange(n_classes)).sum(axis=1)


def test_vote_counts_gpuknn(benchmark, neighbour_classes):
    benchmark.group = VOTE_GROUP
    counts = benchmark(predict.vote_counts, neighbour_classes, VOTE_CLASSES)
    np.testing.assert_array_equal(counts, add_at_counts(neighbour_classes, VOTE_CLASSES))


def test_vote_counts_numpy_add_at(benchmark, neighbour_classes):
    benchmark.group = VOTE_GROUP
    counts = benchmark(add_at_counts, neighbour_classes, VOTE_CLASSES)
    assert counts.sum() == VOTE_ROWS * VOTE_K


def test_vote_counts_numpy_one_hot(benchmark, neighbour_classes):
    benchmark.group = VOTE_GROUP
    counts = benchmark(one_hot_counts, neighbour_classes, VOTE_CLASSES)
    assert counts.sum() == VOTE_ROWS * VOTE_K
