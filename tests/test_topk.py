"""select_k / merge_k against a full stable sort, on awkward sizes and heavy ties."""

from __future__ import annotations

import numpy as np
import pytest

from gpuknn import _backend
from gpuknn.search.topk import merge_k, select_k


def stable_reference(scores: np.ndarray, k: int):
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


SHAPES = [(1, 1, 1), (3, 7, 7), (5, 2047, 1), (17, 2049, 10), (33, 5003, 1), (9, 20011, 100),
          (4, 65537, 10), (3, 30000, 2048), (6, 9000, 2047)]


@pytest.mark.parametrize(("rows", "cols", "k"), SHAPES)
@pytest.mark.parametrize("ties", ["none", "heavy", "all-equal"])
def test_select_k_matches_stable_sort(xp, rng, rows, cols, k, ties):
    if ties == "none":
        scores = rng.standard_normal((rows, cols)).astype(np.float32)
    elif ties == "heavy":
        scores = rng.integers(0, 7, size=(rows, cols)).astype(np.float32)
    else:
        scores = np.full((rows, cols), 3.0, dtype=np.float32)
    values, columns = select_k(xp.asarray(scores), k, xp=xp)
    want_values, want_columns = stable_reference(scores, k)
    np.testing.assert_array_equal(_backend.to_host(columns), want_columns)
    np.testing.assert_array_equal(_backend.to_host(values), want_values)


def test_select_k_ties_in_an_unchosen_group(xp):
    # The k-th value 1.0 is also the minimum of a group that does not make the first cut:
    # the smaller column must still win.
    scores = np.full((2, 10000), 9.0, dtype=np.float32)
    scores[:, 9999] = 0.0
    scores[:, 5000] = 1.0
    scores[:, 17] = 1.0
    values, columns = select_k(xp.asarray(scores), 2, xp=xp)
    assert _backend.to_host(columns).tolist() == [[9999, 17], [9999, 17]]
    assert _backend.to_host(values).tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_select_k_keeps_infinities_last(xp, rng):
    scores = rng.standard_normal((4, 5000)).astype(np.float32)
    scores[:, ::2] = np.inf
    values, columns = select_k(xp.asarray(scores), 30, xp=xp)
    assert np.isfinite(_backend.to_host(values)).all()
    assert (_backend.to_host(columns) % 2 == 1).all()


@pytest.mark.parametrize("k", [0, 11])
def test_select_k_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be in"):
        select_k(np.zeros((2, 10), dtype=np.float32), k)


def test_merge_k_orders_by_value_then_column(xp):
    values = np.array([[2.0, 1.0, 1.0, np.inf], [5.0, 4.0, 3.0, 2.0]], dtype=np.float32)
    columns = np.array([[40, 30, 10, 99], [1, 2, 3, 4]], dtype=np.int64)
    got_values, got_columns = merge_k(xp.asarray(values), xp.asarray(columns), 3, xp=xp)
    assert _backend.to_host(got_columns).tolist() == [[10, 30, 40], [4, 3, 2]]
    assert _backend.to_host(got_values).tolist() == [[1.0, 1.0, 2.0], [2.0, 3.0, 4.0]]
