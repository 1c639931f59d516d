"""IVFSearch.search's lean path answers exactly as the straightforward one did.

The search keeps one ``SearchParametersIVF`` per nprobe, checks for missing neighbours
with one flat pass and square-roots L2 distances in place. The reference below is the
earlier, straightforward code: a new parameters object per call, the per-row short
check always, new arrays. Both must agree bit for bit, with and without short rows
(re-searched over every list) and with neighbours that stay missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpuknn import KNN
from gpuknn.benchmark.ivf_replay import same_results
from gpuknn.datasets.synthetic import clustered
from gpuknn.metrics import MISSING_INDEX, missing_distance
from gpuknn.search.faiss_index import IVFSearch, require_faiss

faiss = require_faiss()


def reference_search(search: IVFSearch, queries: np.ndarray, k: int):
    """IVFSearch.search written plainly: every vector in the probed lists (all lists for
    rows short of k), sorted by (distance, id), the first k."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    everything = max(search.index.ntotal, k)
    params = faiss.SearchParametersIVF(nprobe=search.nprobe)
    distances, positions = search.index.search(queries, everything, params=params)
    short = np.flatnonzero((positions[:, :k] == MISSING_INDEX).any(axis=1))
    if short.size and search.nprobe < search.index.nlist:
        everywhere = faiss.SearchParametersIVF(nprobe=search.index.nlist)
        distances[short], positions[short] = search.index.search(queries[short], everything,
                                                                 params=everywhere)
    missing = positions == MISSING_INDEX
    ranking = np.where(missing, np.inf, distances if search.metric == "L2" else -distances)
    order = np.lexsort((np.where(missing, everything, positions), ranking), axis=1)[:, :k]
    distances = np.take_along_axis(distances, order, axis=1)
    positions = np.take_along_axis(positions, order, axis=1)
    missing = positions == MISSING_INDEX
    if search.metric == "L2":
        distances = np.sqrt(np.maximum(distances, 0))
    distances[missing] = missing_distance(search.metric)
    return distances.astype(np.float32, copy=False), positions.astype(np.int64, copy=False)


@pytest.fixture(scope="module")
def data():
    X, y = clustered(900, 16, 4, seed=5)
    return X[:800], y[:800], X[800:]


def _build(X, index_type, metric, nlists, nprobe):
    pq_m = 4 if index_type == "faiss.IVFPQ" else None
    return IVFSearch.build(X, index_type=index_type, metric=metric, nlists=nlists, pq_m=pq_m,
                           nprobe=nprobe, seed=7)


def _assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("index_type", ["faiss.IVFFlat", "faiss.IVFPQ"])
@pytest.mark.parametrize("metric", ["L2", "INNER_PRODUCT"])
@pytest.mark.parametrize(("nlists", "nprobe", "k"), [
    (8, 3, 10),     # every row finds k: no short rows
    (100, 1, 12),   # ~8 vectors a list: most rows are short and searched again
    (100, 2, 12),   # some rows short, some not
    (4, 4, 5),      # nprobe == nlist: nothing to search again
])
def test_search_matches_the_straightforward_code(data, index_type, metric, nlists, nprobe, k):
    X, _, Q = data
    search = _build(X, index_type, metric, nlists, nprobe)
    want = reference_search(search, Q, k)
    _assert_same(search.search(Q, k), want)
    _assert_same(search.search(Q[:1], k), reference_search(search, Q[:1], k))
    if nlists == 100:  # the case is what it says: short rows, found again
        first = search.index.search(Q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))[1]
        assert (first == MISSING_INDEX).any()
        assert not (want[1] == MISSING_INDEX).any()


@pytest.mark.parametrize("metric", ["L2", "INNER_PRODUCT"])
def test_neighbours_beyond_the_index_stay_missing(data, metric):
    X, _, Q = data
    search = _build(X[:300], "faiss.IVFFlat", metric, 30, 2)
    got = search.search(Q, 310)  # more than the 300 indexed vectors
    _assert_same(got, reference_search(search, Q, 310))
    assert (got[1][:, 300:] == MISSING_INDEX).all()
    assert (got[0][:, 300:] == missing_distance(metric)).all()


def test_search_parameters_follow_nprobe(data):
    X, _, Q = data
    search = _build(X, "faiss.IVFFlat", "L2", 16, 2)
    assert search._search_parameters(2) is search._search_parameters(2)
    assert search._search_parameters(5).nprobe == 5
    search.search(Q, 10)
    search.nprobe = 9  # a later nprobe gets its own parameters, not the cached ones
    _assert_same(search.search(Q, 10), reference_search(search, Q, 10))
    _assert_same(search.search(Q, 10), IVFSearch(search.index, "L2", 9).search(Q, 10))


@pytest.mark.parametrize(("index_type", "extra"), [
    ("faiss.IVFFlat", {"faiss_index_ivf_nlists": 100, "faiss_index_nprobe": 1}),
    ("faiss.IVFFlat", {"index_metric": "COSINE", "faiss_index_nprobe": 2}),
    ("faiss.IVFPQ", {"faiss_index_pq_m": 3, "faiss_index_ivf_nlists": 50}),  # 16 -> 18 dims
])
def test_kneighbors_is_faiss_answer_in_gpuknn_convention(data, index_type, extra):
    X, y, Q = data
    model = KNN(k=10, sample_size=len(X), index_type=index_type, device="cpu",
                predictor_type="classifier", **extra).fit(X, y).fitted_model
    distances, ids = model.kneighbors(Q)
    want_d, want_p = reference_search(model.index, model.preparation.apply(Q, xp=np), 10)
    np.testing.assert_array_equal(distances, want_d)
    np.testing.assert_array_equal(ids, model.ids[want_p])
    checked = same_results(model, Q)  # the benchmark's own check agrees
    assert checked["identical"]
    assert (checked["short_rows"] > 0) is (extra.get("faiss_index_nprobe") == 1)
