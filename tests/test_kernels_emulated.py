"""The CUDA kernels, run by the CPU emulator (``cuda_emulator.h``) against their twins.

These tests run the real ``kernels/*.cu`` sources through the real launch wrappers of
:mod:`gpuknn.kernels` and the GPU branches of ``topk``, ``predict`` and ``exact``, with
an ``xp`` that is numpy plus emulated kernels (``_cuda_emulator.EMULATED``). They catch
logic errors (indexing, bounds, barriers, warp reductions, tie rules) and argument
errors (a dtype or an integer width that does not match the kernel's parameter) on every
CI machine. They do not replace the ``gpu`` tests of ``test_kernels.py``: an emulator
runs one block at a time and knows nothing of a GPU's speed or memory model.

Sizes are smaller than the GPU tests' (every CUDA thread is an OS thread), but as
awkward: not multiples of the block size, k from 1 to 2048, ties, signed zeros,
missing neighbours, dimensions that are not powers of two.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _cuda_emulator import COMPILER, EMULATED, SANITIZE_VARIABLE, EmulatedRawModule

from gpuknn import kernels
from gpuknn.model import predict
from gpuknn.model.reduction import FJLT
from gpuknn.search.exact import ExactSearch
from gpuknn.search.topk import merge_k, select_k

pytestmark = pytest.mark.skipif(COMPILER is None, reason="g++ is not installed")
xp = EMULATED


def _scores(rng, kind: str, shape: tuple[int, int]) -> np.ndarray:
    if kind == "gaussian":
        return rng.standard_normal(shape).astype(np.float32) * 1e3
    if kind == "integer ties":  # many equal scores: ties must go to the smaller column
        return rng.integers(-3, 4, shape).astype(np.float32)
    values = np.array([-0.0, 0.0, 1.0, -1.0, np.inf, -np.inf], np.float32)
    return rng.choice(values, shape)


@pytest.mark.parametrize(("n_rows", "n_cols", "k"),
                         [(1, 1, 1), (7, 5, 5), (9, 3001, 10), (3, 2049, 2048), (4, 300, 257)])
@pytest.mark.parametrize("kind", ["gaussian", "integer ties", "signed zeros and infinities"])
def test_select_k_kernel_matches_its_twin(rng, n_rows, n_cols, k, kind):
    scores = _scores(rng, kind, (n_rows, n_cols))
    values, columns = kernels.select_k(scores, k, xp=xp)
    want_values, want_columns = select_k(scores, k, xp=np)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(columns, want_columns)


@pytest.mark.parametrize(("n_rows", "n_cols", "k"), [(6, 1000, 10), (3, 2100, 2048)])
def test_select_k_kernel_adds_column_offsets_as_the_twin_does(rng, n_rows, n_cols, k):
    scores = _scores(rng, "gaussian", (n_rows, n_cols))
    offsets = np.round(rng.standard_normal(n_cols) * 1e3).astype(np.float32)
    values, columns = kernels.select_k(scores, k, xp=xp, column_offsets=offsets)
    summed = scores.copy()
    want_values, want_columns = select_k(summed, k, xp=np, column_offsets=offsets)
    np.testing.assert_array_equal(summed, scores + offsets)  # the twin adds in place
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(columns, want_columns)


def test_tiles_selected_by_the_kernel_merge_into_one_selection(rng):
    scores = _scores(rng, "integer ties", (6, 700))
    parts = [select_k(scores[:, s:s + 250], 12, xp=xp) for s in range(0, 700, 250)]
    values = np.concatenate([v for v, _ in parts], axis=1)
    columns = np.concatenate([c + s for (_, c), s in zip(parts, range(0, 700, 250),
                                                         strict=True)], axis=1)
    got = merge_k(values, columns, 12, xp=xp)
    want = select_k(scores, 12, xp=np)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(("n_queries", "k", "n_classes"),
                         [(1, 1, 1), (97, 7, 3), (65, 100, 26), (9, 2048, 1000),
                          (20, 10, kernels.MAX_VOTE_CLASSES)])
def test_vote_kernel_matches_its_twin(rng, n_queries, k, n_classes):
    classes = rng.integers(-1, n_classes, size=(n_queries, k))  # -1: missing neighbour
    classes[: n_queries // 3] = np.sort(classes[: n_queries // 3], axis=1)
    classes[n_queries // 3 : n_queries // 2, ::2] = 0  # ties between class 0 and others
    counts, majority = kernels.vote(classes, n_classes, xp=xp)
    want_counts = predict.vote_counts(classes, n_classes, xp=np)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(majority, predict.majority(want_counts, xp=np))
    np.testing.assert_array_equal(predict.vote_counts(classes, n_classes, xp=xp), want_counts)


@pytest.mark.parametrize(("n_queries", "k"), [(1, 1), (333, 10), (17, 33), (9, 2048)])
def test_mean_kernel_matches_its_twin(rng, n_queries, k):
    labels = (rng.standard_normal((n_queries, k)) * 100).astype(np.float32)
    found = rng.random((n_queries, k)) < 0.9
    found[0] = False  # a query without neighbours: NaN in both
    got = kernels.mean(labels, found, xp=xp)
    want = predict.mean_labels(labels, found, xp=np)
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert np.isnan(got[0])


@pytest.mark.parametrize(("n_rows", "input_dim", "target_dim"),
                         [(1, 1, 1), (40, 54, 16), (9, 100, 64), (5, 784, 128), (3, 5000, 1000)])
def test_fjlt_kernel_matches_its_twin(rng, n_rows, input_dim, target_dim):
    transform = FJLT.fit(input_dim, target_dim, seed=7)
    X = rng.standard_normal((n_rows, input_dim)).astype(np.float32)
    got = transform.transform(X, xp=xp)  # the kernel, through the GPU branch
    want = transform.transform(X, xp=np)  # the twin
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("metric", ["L2", "INNER_PRODUCT"])
def test_exact_search_gpu_branch_matches_the_cpu(rng, metric):
    # Integer data: many tied distances. Small tiles: several per query chunk, merged.
    X = np.round(rng.standard_normal((3000, 20)) * 3).astype(np.float32)
    Q = np.round(rng.standard_normal((40, 20)) * 3).astype(np.float32)
    on_emulator = ExactSearch(X, metric, xp=xp, tile_bytes=40 * 1000 * 4).search(Q, 15)
    on_cpu = ExactSearch(X, metric, partition="never").search(Q, 15)
    for got, want in zip(on_emulator, on_cpu, strict=True):
        np.testing.assert_array_equal(got, want)


def test_launch_arguments_are_checked_like_the_kernel_declares_them():
    mean = kernels._kernel(xp, "mean")
    labels, found, out = (np.zeros((1, 1), np.float32), np.zeros((1, 1), bool),
                          np.zeros(1, np.float32))
    with pytest.raises(TypeError, match="n_queries: a int parameter needs int32, got int 1"):
        mean((1,), (32,), (labels, found, 1, np.int32(1), out))  # CuPy would pass 64 bits
    with pytest.raises(TypeError, match="labels: a float\\* parameter needs"):
        mean((1,), (32,), (labels.astype(np.float64), found, np.int32(1), np.int32(1), out))


def test_the_emulator_catches_a_broken_selection(rng):
    # The k-th bin chosen one too late: the emulated kernel must then disagree.
    broken = kernels.source("select_k").replace("below + histogram[b] >= wanted",
                                                "below + histogram[b] > wanted")
    assert broken != kernels.source("select_k")
    launch = EmulatedRawModule(broken).get_function("gpuknn_select_k")
    scores = _scores(rng, "gaussian", (5, 100))
    values = np.empty((5, 100), np.float32)
    columns = np.empty((5, 100), np.int64)
    launch((5,), (kernels.SELECT_THREADS,),
           (scores, scores, np.int32(0), np.int32(5), np.int32(100), np.int32(100), values,
            columns))
    assert not np.array_equal(columns, select_k(scores, 100, xp=np)[1])


RACE_CHECK = """
import numpy as np
from _cuda_emulator import EMULATED as xp
from gpuknn import kernels
from gpuknn.model.reduction import FJLT
rng = np.random.default_rng(0)
kernels.select_k(rng.integers(-3, 4, (3, 700)).astype(np.float32), 50, xp=xp)
kernels.select_k(rng.standard_normal((2, 3000)).astype(np.float32), 2048, xp=xp)
kernels.vote(rng.integers(-1, 5, (40, 9)), 5, xp=xp)
kernels.mean(rng.standard_normal((40, 9)).astype(np.float32), rng.random((40, 9)) < 0.8, xp=xp)
FJLT.fit(100, 16, seed=1).transform(rng.standard_normal((4, 100)).astype(np.float32), xp=xp)
print("ran every kernel")
"""


def _libtsan() -> str | None:
    if COMPILER is None:
        return None
    found = subprocess.run([COMPILER, "-print-file-name=libtsan.so"], capture_output=True,
                           text=True, check=False).stdout.strip()
    return found if os.path.isabs(found) and os.path.exists(found) else None


@pytest.mark.skipif(_libtsan() is None, reason="g++ has no ThreadSanitizer runtime")
def test_no_kernel_has_a_data_race_under_thread_sanitizer():
    # A missing __syncthreads between writing and reading shared memory is a race between
    # the emulator's threads; ThreadSanitizer reports it (checked by removing one by hand).
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "LD_PRELOAD": _libtsan(), SANITIZE_VARIABLE: "thread",
           "TSAN_OPTIONS": "halt_on_error=0 report_signal_unsafe=0",
           "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}
    try:  # about 40 s with the sanitized builds; a racy kernel can also corrupt and hang
        result = subprocess.run([sys.executable, "-c", RACE_CHECK], capture_output=True,
                                text=True, env=env, timeout=300, check=False)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the kernels hung under ThreadSanitizer: {(err.stderr or b'')[-3000:]!r}")
    assert "ran every kernel" in result.stdout, result.stderr[-3000:]
    assert "ThreadSanitizer" not in result.stderr, result.stderr[-6000:]
