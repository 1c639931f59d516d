"""faiss-gpu for IVF indexes: the CPU fallback everywhere, the GPU path where faiss-gpu is.

The tests marked ``gpu`` also need a faiss built with GPU support (the ``gpu`` extra);
they skip on faiss-cpu. The others run everywhere and check what happens when a GPU
is asked for and faiss cannot use one: the same index, built and searched on the CPU,
and a warning that says why.
"""

from __future__ import annotations

import logging
import threading
import types

import numpy as np
import pytest
from _compare import assert_valid_knn, recall_at_k, reference_knn

from gpuknn import KNN, KNNModel
from gpuknn.datasets.synthetic import clustered
from gpuknn.search.faiss_gpu import (
    FLOAT16_LOOKUP_PQ_M,
    GPU_MAX_K,
    faiss_has_gpu,
    float16_lookup_tables,
)
from gpuknn.search.faiss_index import IVFSearch, require_faiss

faiss = require_faiss()
needs_faiss_gpu = pytest.mark.skipif(not faiss_has_gpu(faiss),
                                     reason="needs faiss built with GPU support (faiss-gpu)")


@pytest.fixture(scope="module")
def data():
    X, _ = clustered(6000, 64, 8, seed=11)
    return X[:5000], X[5000:5300]


def _build(X, device, index_type="faiss.IVFFlat", pq_m=None, nprobe=4, nlists=32):
    return IVFSearch.build(X, index_type=index_type, metric="L2", nlists=nlists, pq_m=pq_m,
                           nprobe=nprobe, seed=3, device=device)


# --- everywhere --------------------------------------------------------------------------


@pytest.mark.parametrize(("index_type", "pq_m", "expected"), [
    ("faiss.IVFPQ", 56, True), ("faiss.IVFPQ", 64, True), ("faiss.IVFPQ", 96, True),
    ("faiss.IVFPQ", 48, False), ("faiss.IVFPQ", 8, False), ("faiss.IVFFlat", None, False),
])
def test_float16_lookup_tables_only_where_shared_memory_needs_them(index_type, pq_m, expected):
    # m sub-quantizers x 256 codes x 4 bytes: 48 fits faiss's 48 KiB, 56 does not.
    assert float16_lookup_tables(index_type, pq_m) is expected
    assert (pq_m is not None and pq_m * 256 * 4 > 48 * 1024) is (pq_m in FLOAT16_LOOKUP_PQ_M)


def test_faiss_without_gpu_support_is_detected():
    assert not faiss_has_gpu(types.SimpleNamespace(get_num_gpus=lambda: 1))

    def broken_driver():
        raise RuntimeError("CUDA driver version is insufficient")

    assert not faiss_has_gpu(types.SimpleNamespace(StandardGpuResources=object,
                                                   get_num_gpus=broken_driver))
    assert faiss_has_gpu(types.SimpleNamespace(StandardGpuResources=object,
                                               get_num_gpus=lambda: 2))


@pytest.mark.skipif(faiss_has_gpu(faiss), reason="checks the fallback of faiss without a GPU")
@pytest.mark.parametrize("index_type", ["faiss.IVFFlat", "faiss.IVFPQ"])
def test_gpu_request_without_faiss_gpu_builds_the_cpu_index(data, caplog, index_type):
    X, Q = data
    pq_m = 16 if index_type == "faiss.IVFPQ" else None
    cpu = _build(X, "cpu", index_type, pq_m)
    with caplog.at_level(logging.WARNING, logger="gpuknn.search.faiss_index"):
        asked = _build(X, "gpu", index_type, pq_m)
    assert asked.device == "cpu" and asked.gpu is None
    assert "no GPU support" in caplog.text and "faiss-gpu" in caplog.text
    for got, want in zip(asked.search(Q, 10), cpu.search(Q, 10), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(faiss_has_gpu(faiss), reason="checks the fallback of faiss without a GPU")
def test_loading_onto_a_gpu_without_faiss_gpu_keeps_the_cpu_index(data, caplog):
    X, _ = data
    search = _build(X, "cpu")
    with caplog.at_level(logging.WARNING, logger="gpuknn.search.faiss_index"):
        assert search.to_device("gpu") is search
    assert search.gpu is None and "no GPU support" in caplog.text
    assert search.to_device("cpu") is search


# --- on a GPU with faiss-gpu -------------------------------------------------------------


@pytest.mark.gpu
@needs_faiss_gpu
def test_gpu_ivfflat_probing_every_list_is_exact(data):
    X, Q = data
    search = _build(X, "gpu", nprobe=32)
    assert search.device == "gpu"
    distances, positions = search.search(Q, 10)
    assert_valid_knn(X, Q, positions, 10)
    want, _, _ = reference_knn(X, Q, 10)
    np.testing.assert_allclose(distances, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@needs_faiss_gpu
@pytest.mark.parametrize("pq_m", [16, 64])
def test_gpu_ivfpq_matches_its_cpu_copy(data, pq_m):
    # The GPU and CPU indexes hold the same codes and lists; only the lookup tables'
    # precision (float16 at pq_m=64) and summation order differ, so near-ties may swap.
    X, Q = data
    search = _build(X, "gpu", "faiss.IVFPQ", pq_m, nprobe=8)
    _, on_gpu = search.search(Q, 10)
    _, on_cpu = IVFSearch(search.index, "L2", 8).search(Q, 10)
    assert recall_at_k(on_gpu, on_cpu) >= 0.95
    _, exact, _ = reference_knn(X, Q, 10)
    # The CPU build of the same index gets recall 0.63 (pq_m=16) and 0.97 (pq_m=64) here;
    # a GPU-trained one differs by its k-means, not by much.
    assert recall_at_k(on_gpu, exact) >= 0.5


@pytest.mark.gpu
@needs_faiss_gpu
def test_k_beyond_faiss_gpu_limit_searches_the_cpu_index():
    X, _ = clustered(GPU_MAX_K + 500, 16, 4, seed=5)
    search = _build(X, "gpu", nprobe=8, nlists=8)
    _, positions = search.search(X[:3], GPU_MAX_K + 1)
    assert_valid_knn(X, X[:3], positions, GPU_MAX_K + 1)


@pytest.mark.gpu
@needs_faiss_gpu
def test_concurrent_searches_agree_with_sequential_ones(data):
    X, Q = data
    search = _build(X, "gpu", nprobe=8)
    want = search.search(Q, 10)[1]
    results, errors = [None] * 8, []

    def work(slot):
        try:
            results[slot] = search.search(Q, 10)[1]
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for got in results:
        np.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@needs_faiss_gpu
@pytest.mark.parametrize("index_type", ["faiss.IVFFlat", "faiss.IVFPQ"])
def test_gpu_model_saves_and_loads_on_either_device(tmp_path, data, index_type):
    X, Q = data
    y = (X[:, 0] > 0).astype(np.float32)
    extra = {"faiss_index_pq_m": 64} if index_type == "faiss.IVFPQ" else {}
    est = KNN(k=5, predictor_type="classifier", sample_size=len(X), index_type=index_type,
              faiss_index_ivf_nlists=32, device="gpu", **extra).fit(X, y)
    assert est.fitted_model.index.device == "gpu"
    est.fitted_model.save(tmp_path / "model")
    on_gpu = KNNModel.load(tmp_path / "model", device="gpu")
    on_cpu = KNNModel.load(tmp_path / "model", device="cpu")
    assert on_gpu.index.device == "gpu" and on_cpu.index.device == "cpu"
    want = est.predict(Q)  # numpy queries: numpy answers, whatever the device
    for model in (on_gpu, on_cpu):
        assert (model.predict(Q) == want).mean() >= 0.98
