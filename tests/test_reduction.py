"""sign and fjlt reductions: exact algebra, Johnson-Lindenstrauss distortion, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import hadamard
from scipy.spatial.distance import pdist

from gpuknn import _backend
from gpuknn.model.reduction import FJLT, REDUCTIONS, SignProjection, walsh_hadamard


@pytest.mark.parametrize("n", [1, 2, 8, 64, 1024])
def test_walsh_hadamard_equals_the_hadamard_matrix(xp, rng, n):
    X = rng.standard_normal((5, n)).astype(np.float32)
    got = _backend.to_host(walsh_hadamard(xp.asarray(X), xp=xp))
    np.testing.assert_allclose(got, X @ hadamard(n), rtol=1e-5, atol=1e-4)


def test_walsh_hadamard_refuses_other_widths():
    with pytest.raises(ValueError, match="power-of-two"):
        walsh_hadamard(np.zeros((2, 6), dtype=np.float32))


def test_fjlt_is_sign_flip_hadamard_subsample(rng):
    fjlt = FJLT.fit(input_dim=100, target_dim=20, seed=3)
    assert fjlt.padded_dim == 128
    X = rng.standard_normal((7, 100)).astype(np.float32)
    padded = np.zeros((7, 128))
    padded[:, :100] = X
    want = (padded * fjlt.flips) @ hadamard(128)[:, fjlt.keep] / np.sqrt(20)
    np.testing.assert_allclose(fjlt.transform(X), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fjlt.apply(X), want, rtol=1e-4, atol=1e-4)  # CPU GEMM path


def test_sign_projection_is_scaled_sign_matrix(rng):
    sign = SignProjection.fit(input_dim=50, target_dim=10, seed=1)
    assert set(np.unique(sign.signs)) == {-1, 1}
    X = rng.standard_normal((4, 50)).astype(np.float32)
    np.testing.assert_allclose(sign.apply(X), X @ sign.signs / np.sqrt(10), rtol=1e-5, atol=1e-5)


# Johnson-Lindenstrauss: n points into t dimensions keep all squared pairwise distances
# within (1 +- eps) with high probability when t >= 4 ln(n) / (eps^2 / 2 - eps^3 / 3).
# For n=200 points and t=256 that gives eps ~= 0.45. The mean ratio is an average over
# 19,900 pairs, so it must be close to 1 when squared norms are preserved in expectation.
JL_POINTS, JL_TARGET, JL_EPS = 200, 256, 0.45


@pytest.mark.parametrize("kind", ["sign", "fjlt"])
@pytest.mark.parametrize("input_dim", [1000, 1024])
def test_reduction_preserves_distances_within_jl_bounds(xp, rng, kind, input_dim):
    X = rng.standard_normal((JL_POINTS, input_dim)).astype(np.float32)
    X[:, : input_dim // 10] *= 5  # anisotropic, so that not only the average case is seen
    reduction = REDUCTIONS[kind].fit(input_dim, JL_TARGET, seed=11)
    Y = _backend.to_host(reduction.apply(xp.asarray(X), xp=xp))
    ratio = pdist(Y.astype(np.float64), "sqeuclidean") / pdist(X.astype(np.float64),
                                                              "sqeuclidean")
    assert np.abs(ratio - 1).max() < JL_EPS
    assert abs(ratio.mean() - 1) < 0.02


@pytest.mark.parametrize("kind", ["sign", "fjlt"])
def test_reduction_is_deterministic_per_seed_and_round_trips(rng, kind):
    X = rng.standard_normal((10, 40)).astype(np.float32)
    first = REDUCTIONS[kind].fit(40, 8, seed=5)
    again = REDUCTIONS[kind].fit(40, 8, seed=5)
    other = REDUCTIONS[kind].fit(40, 8, seed=6)
    np.testing.assert_array_equal(first.apply(X), again.apply(X))
    assert not np.allclose(first.apply(X), other.apply(X))
    restored = REDUCTIONS[kind].from_arrays(first.to_arrays())
    np.testing.assert_array_equal(first.apply(X), restored.apply(X))


def test_fjlt_processes_rows_in_chunks(rng, monkeypatch):
    from gpuknn.model import reduction

    X = rng.standard_normal((50, 30)).astype(np.float32)
    fjlt = FJLT.fit(30, 6, seed=0)
    whole = fjlt.transform(X)
    monkeypatch.setattr(reduction, "ROW_CHUNK", 7)
    np.testing.assert_allclose(fjlt.transform(X), whole, rtol=1e-6)


def test_fjlt_without_the_dense_matrix_gives_the_same_rows(rng, monkeypatch):
    from gpuknn.model import reduction

    X = rng.standard_normal((20, 300)).astype(np.float32)
    dense = FJLT.fit(300, 40, seed=2).apply(X)
    monkeypatch.setattr(reduction, "DENSE_MAX_ELEMENTS", 0)
    np.testing.assert_allclose(FJLT.fit(300, 40, seed=2).apply(X), dense, rtol=1e-4, atol=1e-5)
