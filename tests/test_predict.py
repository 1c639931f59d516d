"""Voting and averaging: tie rule, shares, missing neighbours; against scipy.stats.mode."""

from __future__ import annotations

import numpy as np
from scipy import stats

from gpuknn import _backend
from gpuknn.model import predict


def test_vote_majority_and_ties_to_the_smallest_class(xp):
    classes = np.array([[2, 2, 1], [0, 1, 2], [3, 1, 3], [1, 0, 0]])
    counts = predict.vote_counts(xp.asarray(classes), 4, xp=xp)
    majority = _backend.to_host(predict.majority(counts, xp=xp))
    assert majority.tolist() == [2, 0, 3, 0]


def test_vote_agrees_with_scipy_mode(xp, rng):
    classes = rng.integers(0, 6, size=(2000, 7))
    counts = predict.vote_counts(xp.asarray(classes), 6, xp=xp)
    majority = _backend.to_host(predict.majority(counts, xp=xp))
    np.testing.assert_array_equal(majority, stats.mode(classes, axis=1, keepdims=False).mode)


def test_vote_shares_sum_to_one_and_skip_missing(xp):
    classes = np.array([[0, 0, 1, -1], [-1, -1, -1, -1]])
    counts = predict.vote_counts(xp.asarray(classes), 2, xp=xp)
    shares = _backend.to_host(predict.vote_shares(counts, xp=xp))
    np.testing.assert_allclose(shares, [[2 / 3, 1 / 3], [0, 0]])
    assert shares.dtype == np.float32


def test_mean_labels_skips_missing_neighbours(xp):
    labels = np.array([[1.0, 2.0, 6.0], [4.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    found = np.array([[True, True, True], [True, False, False], [False, False, False]])
    means = _backend.to_host(predict.mean_labels(xp.asarray(labels), xp.asarray(found), xp=xp))
    np.testing.assert_allclose(means[:2], [3.0, 4.0])
    assert np.isnan(means[2])
