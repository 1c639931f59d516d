"""Training gives its sample up: an IVF index is filled a chunk at a time and each chunk's
memory is handed back (the index byte-identical to one ``add``), and a raw sample that the
preparation copied is handed back once it is copied; a Flat base keeps the sample itself."""

from __future__ import annotations

import itertools
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from gpuknn import KNN, KNNModel, _backend
from gpuknn.hyperparameters import parse
from gpuknn.model.build import build_model
from gpuknn.search import faiss_index
from gpuknn.search.faiss_index import IVFSearch, add_chunks, index_bytes

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="madvise(MADV_DONTNEED) is Linux's")
PAGE = mmap.PAGESIZE


def first_whole_row(array: np.ndarray) -> int:
    """The first row at or after the array's first page boundary."""
    return -(-(-array.ctypes.data % PAGE) // array.strides[0])


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


@linux_only
def test_discarded_rows_leave_memory_and_read_as_zeros():
    array = np.ones((64 << 20) // 4, dtype=np.float32).reshape(-1, 4)  # 64 MiB, touched
    before = resident_bytes()
    handed_back = _backend.discard_rows(array, len(array) // 2)
    assert 31 << 20 <= handed_back <= 32 << 20
    assert before - resident_bytes() >= 30 << 20  # the pages left this process
    first = first_whole_row(array)
    assert not array[first:first + handed_back // array.strides[0]].any()
    assert array[:first].all()  # the rows that share the first page with other memory
    assert array[len(array) // 2:].all()  # rows past ``stop`` are untouched


@linux_only
def test_only_whole_pages_inside_the_rows_are_discarded():
    """A view that starts and stops inside pages: bytes before it, and the rows past
    ``stop`` that share its last page, keep their values."""
    base = np.arange(3 * 300_000, dtype=np.float32).reshape(-1, 3)  # 12-byte rows
    view = base[5:]
    stop = 200_001
    assert _backend.discard_rows(view, stop) > 0
    np.testing.assert_array_equal(base[:5], np.arange(15, dtype=np.float32).reshape(5, 3))
    assert (view[stop:, 0] == np.arange(5 + stop, len(base)) * 3).all()
    kept = first_whole_row(view)  # rows that share the first page with base[:5]
    assert kept > 0 and (view[:kept, 0] == np.arange(5, 5 + kept) * 3).all()


def _memory_map(folder: Path) -> np.ndarray:
    path = folder / "rows.f32"
    np.arange(1 << 20, dtype=np.float32).tofile(path)
    return np.memmap(path, dtype=np.float32, mode="c").reshape(-1, 8)  # writable, a file's


LEFT_ALONE = {
    "strided": lambda folder: np.ones((1000, 64), np.float32)[:, :32],
    "read-only": lambda folder: np.frombuffer(bytes(1 << 20), np.float32).reshape(-1, 8),
    "another owner": lambda folder: np.frombuffer(bytearray(1 << 22), np.float32).reshape(-1, 8),
    "memory-mapped file": _memory_map,
    "numpy scalar": lambda folder: np.float32(1.0),
    "0-d array": lambda folder: np.array(1.0),
}


@pytest.mark.parametrize("make", LEFT_ALONE.values(), ids=LEFT_ALONE.keys())
def test_arrays_it_does_not_apply_to_are_left_alone(make, tmp_path):
    array = make(tmp_path)
    copy = np.array(array, copy=True)
    assert _backend.discard_rows(array, 10**9) == 0
    np.testing.assert_array_equal(array, copy)


@linux_only
def test_a_single_row_with_any_stride_discards_only_its_own_bytes():
    """numpy calls a one-row view C-contiguous whatever its first stride: the rows' size
    comes from the shape, or pages of the array it views would go."""
    base = np.arange(4 * 800_000, dtype=np.float32).reshape(-1, 4)
    row = base[::100_000][:1]
    assert row.flags.c_contiguous and row.strides[0] > PAGE
    assert _backend.discard_rows(row, 1) == 0  # 16 bytes: no whole page inside
    np.testing.assert_array_equal(base.ravel(), np.arange(4 * 800_000, dtype=np.float32))


@pytest.mark.parametrize(("n_rows", "size"), [(1, 4), (8, 4), (9, 4), (12, 4), (13, 4),
                                              (100, 7), (65_536 * 5 + 3, None)])
def test_chunks_cover_every_row_once_and_none_is_small(n_rows, size):
    size_in_effect = faiss_index.ADD_CHUNK_ROWS if size is None else size
    chunks = add_chunks(n_rows, size)
    assert chunks[0][0] == 0 and chunks[-1][1] == n_rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert all(stop - start == size_in_effect for start, stop in chunks[:-1])
    last = chunks[-1][1] - chunks[-1][0]
    assert last == n_rows or size_in_effect <= last <= 2 * size_in_effect


@pytest.mark.parametrize("metric", ["L2", "INNER_PRODUCT"])
@pytest.mark.parametrize(("index_type", "pq_m"), [("faiss.IVFFlat", None),
                                                  ("faiss.IVFPQ", 8)])
def test_a_given_up_sample_makes_the_same_index(monkeypatch, index_type, pq_m, metric):
    """Filled 4,096 rows at a time (as 65,536 are in training), the index's bytes are
    those of one add; the sample's discarded pages read as zeros."""
    monkeypatch.setattr(faiss_index, "ADD_CHUNK_ROWS", 4096)
    rng = np.random.default_rng(11)
    X = (rng.standard_normal((30_000, 32)) + rng.integers(0, 6, (30_000, 1))).astype(np.float32)
    settings = {"index_type": index_type, "metric": metric, "nlists": 64, "pq_m": pq_m,
                "nprobe": 4, "seed": 3}
    kept = IVFSearch.build(X.copy(), **settings)
    given = X.copy()
    built = IVFSearch.build(given, **settings, give_up=True)
    assert index_bytes(built.index) == index_bytes(kept.index)
    if sys.platform.startswith("linux"):  # handed back: every row on a whole page
        last_whole_row = (given.ctypes.data + given.nbytes) // PAGE * PAGE
        last_whole_row = (last_whole_row - given.ctypes.data) // given.strides[0]
        assert not given[first_whole_row(given):last_whole_row].any()


def test_training_gives_the_sample_up_but_not_the_users_array():
    """KNN.fit samples into its own buffer: the caller's X is never discarded."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((20_000, 16)).astype(np.float32)
    copy = X.copy()
    KNN(k=3, predictor_type="regressor", sample_size=len(X), index_type="faiss.IVFFlat",
        faiss_index_ivf_nlists=32, device="cpu").fit(X, X[:, 0])
    np.testing.assert_array_equal(X, copy)


def build(features: np.ndarray, **settings) -> KNNModel:
    hp = parse({"k": 5, "predictor_type": "classifier", "sample_size": len(features),
                **settings})
    labels = (np.arange(len(features)) % 3).astype(np.float32)
    return build_model(features, labels, np.arange(len(features)), hp)


@pytest.mark.parametrize("settings", [
    {"dimension_reduction_type": "sign", "dimension_reduction_target": 8},
    {"dimension_reduction_type": "fjlt", "dimension_reduction_target": 8},
    {"index_metric": "COSINE"},
    {"index_type": "faiss.IVFPQ", "faiss_index_pq_m": 16, "faiss_index_ivf_nlists": 16},
], ids=["sign", "fjlt", "cosine", "ivfpq-padded"])
def test_a_copied_raw_sample_is_handed_back_and_answers_stay(settings):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((6_000, 24)).astype(np.float32)
    kept = build(X.copy(), **settings)
    given = X.copy()
    model = build(given, **settings)
    if sys.platform.startswith("linux"):
        assert not given[first_whole_row(given):-1024].any()
    queries = rng.standard_normal((50, 24)).astype(np.float32)
    for got, want in zip(model.kneighbors(queries), kept.kneighbors(queries), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_flat_base_keeps_the_sample_it_was_given():
    """Without a preparation copy the sample becomes the base: nothing is discarded."""
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6_000, 24)).astype(np.float32)
    given = X.copy()
    model = build(given, index_type="faiss.Flat")
    assert np.shares_memory(model.index.vectors, given)
    np.testing.assert_array_equal(np.sort(given, axis=0), np.sort(X, axis=0))
    _, ids = model.kneighbors(X[:20])
    np.testing.assert_array_equal(ids[:, 0], np.arange(20))  # each row its own neighbour
