"""ReservoirSampler: exact sizes, ids, determinism, batch independence, uniformity, bad rows."""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
from scipy import stats

from gpuknn import DataError
from gpuknn.sampling import _SEED_STREAM, ReservoirSampler


def sample(X, y=None, *, size, seed=0, batch=None):
    """Feed X (and y) in batches of ``batch`` rows (one batch if None); return the result."""
    sampler = ReservoirSampler(size, seed=seed)
    batch = batch or max(1, X.shape[0])
    for start in range(0, X.shape[0], batch):
        sampler.add(X[start:start + batch], None if y is None else y[start:start + batch])
    return sampler.result()


def reference_algorithm_r(n_rows: int, size: int, seed: int) -> np.ndarray:
    """Row-by-row Algorithm R over the documented draws: sorted kept row numbers."""
    rng = np.random.default_rng([seed, _SEED_STREAM])
    slots = list(range(min(size, n_rows)))
    for i in range(size, n_rows):
        j = int(np.floor(rng.random() * (i + 1)))
        if j < size:
            slots[j] = i
    return np.sort(np.array(slots, dtype=np.int64))


@pytest.fixture
def data(rng):
    X = rng.standard_normal((3000, 6)).astype(np.float32)
    y = rng.integers(0, 5, size=3000).astype(np.float32)
    return X, y


# -- sizes and ids ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [3000, 3001, 10**6])
@pytest.mark.parametrize("batch", [None, 7, 1000])
def test_sample_size_at_least_rows_keeps_everything_in_order(data, size, batch):
    X, y = data
    features, labels, ids = sample(X, y, size=size, batch=batch)
    np.testing.assert_array_equal(ids, np.arange(3000))
    np.testing.assert_array_equal(features, X)
    np.testing.assert_array_equal(labels, y)
    assert ids.dtype == np.int64
    assert features.dtype == np.float32
    assert labels.dtype == np.float32


@pytest.mark.parametrize("size", [1, 10, 1023, 1024, 1025, 2999])
@pytest.mark.parametrize("batch", [None, 7, 1000])
def test_exact_size_and_rows_match_their_ids(data, size, batch):
    X, y = data
    features, labels, ids = sample(X, y, size=size, seed=5, batch=batch)
    assert features.shape == (size, 6)
    assert labels.shape == ids.shape == (size,)
    assert np.all(np.diff(ids) > 0), "ids must be strictly increasing"
    assert ids[0] >= 0
    assert ids[-1] < 3000
    np.testing.assert_array_equal(features, X[ids])
    np.testing.assert_array_equal(labels, y[ids])


@pytest.mark.parametrize(("n_rows", "size", "seed", "batch"), [
    (50, 10, 0, None), (50, 10, 1, 7), (500, 3, 2, 1), (5000, 1500, 3, 333), (2000, 1999, 4, 64),
])
def test_matches_row_by_row_algorithm_r(rng, n_rows, size, seed, batch):
    # The vectorised replacement (several rows of a batch hitting one slot: the last wins)
    # must keep exactly the rows the documented sequential algorithm keeps.
    X = rng.standard_normal((n_rows, 3)).astype(np.float32)
    _, _, ids = sample(X, size=size, seed=seed, batch=batch)
    np.testing.assert_array_equal(ids, reference_algorithm_r(n_rows, size, seed))


def test_rows_seen_counts_the_whole_stream(data):
    X, y = data
    sampler = ReservoirSampler(10, seed=0)
    for start in range(0, 3000, 250):
        sampler.add(X[start:start + 250], y[start:start + 250])
    assert sampler.rows_seen == 3000


def test_without_labels(data):
    X, _ = data
    features, labels, ids = sample(X, size=100, batch=256)
    assert labels is None
    np.testing.assert_array_equal(features, X[ids])


def test_inputs_are_converted_to_float32(rng):
    X = rng.integers(0, 100, size=(40, 4))
    y = rng.integers(0, 3, size=40)
    features, labels, ids = sample(X, y, size=40)
    assert features.dtype == labels.dtype == np.float32
    np.testing.assert_array_equal(features, X.astype(np.float32))
    np.testing.assert_array_equal(labels, y.astype(np.float32))
    np.testing.assert_array_equal(ids, np.arange(40))


def test_result_does_not_alias_later_additions(data):
    X, y = data
    sampler = ReservoirSampler(3000)
    sampler.add(X[:100], y[:100])
    features, _, _ = sampler.result()
    kept = features.copy()
    sampler.add(X[100:], y[100:])
    np.testing.assert_array_equal(features, kept)


# -- determinism ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [10, 1500])
def test_same_seed_same_sample(data, size):
    X, y = data
    first = sample(X, y, size=size, seed=42, batch=100)
    second = sample(X, y, size=size, seed=42, batch=100)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("size", [1, 10, 1024, 1500])
def test_batch_boundaries_do_not_matter(data, size):
    X, y = data
    _, _, whole = sample(X, y, size=size, seed=11)
    for batch in (1, 7, 1000, 1024, 2999):
        features, labels, ids = sample(X, y, size=size, seed=11, batch=batch)
        np.testing.assert_array_equal(ids, whole, err_msg=f"batch={batch}")
        np.testing.assert_array_equal(features, X[whole])
        np.testing.assert_array_equal(labels, y[whole])


def test_uneven_batches_do_not_matter(data):
    X, y = data
    _, _, whole = sample(X, y, size=100, seed=3)
    sampler = ReservoirSampler(100, seed=3)
    cuts = [0, 1, 1, 99, 100, 101, 640, 641, 2999, 3000]  # including empty batches
    for start, stop in itertools.pairwise(cuts):
        sampler.add(X[start:stop], y[start:stop])
    np.testing.assert_array_equal(sampler.result()[2], whole)


@pytest.mark.parametrize("size", [10, 1500])
def test_different_seed_different_sample(data, size):
    X, y = data
    _, _, a = sample(X, y, size=size, seed=0)
    _, _, b = sample(X, y, size=size, seed=1)
    assert not np.array_equal(a, b)


# -- uniformity -------------------------------------------------------------------------------
RUNS, ROWS, SIZE = 2000, 50, 10
# Significance of the goodness-of-fit test. The seeds 0..RUNS-1 are fixed, so the outcome
# is deterministic; a correct sampler fails it with probability 1e-4 over choices of seeds.
ALPHA = 1e-4


@pytest.fixture(scope="module")
def inclusion_counts():
    """How often each of 50 rows is in a sample of 10, over seeds 0..1999 (batches of 7)."""
    X = np.arange(ROWS, dtype=np.float32).reshape(-1, 1)
    counts = np.zeros(ROWS, dtype=np.int64)
    for seed in range(RUNS):
        _, _, ids = sample(X, size=SIZE, seed=seed, batch=7)
        counts[ids] += 1
    return counts


def test_every_run_has_exactly_sample_size_rows(inclusion_counts):
    assert inclusion_counts.sum() == RUNS * SIZE


def test_inclusion_frequencies_are_uniform(inclusion_counts):
    # Pearson's chi-square against equal frequencies (expected 400 per row, 49 degrees of
    # freedom). Sampling without replacement makes each count Binomial(2000, 0.2), of
    # variance 320, below the multinomial 392 the test assumes: the test is conservative.
    expected = np.full(ROWS, RUNS * SIZE / ROWS)
    statistic, p_value = stats.chisquare(inclusion_counts, expected)
    assert p_value > ALPHA, (statistic, p_value, inclusion_counts)


def test_each_row_within_binomial_tolerance(inclusion_counts):
    # Each row is kept with probability 10/50: its count is Binomial(2000, 0.2). Two-sided
    # bounds at ALPHA / ROWS per row (Bonferroni), i.e. about 400 +- 80.
    low = stats.binom.ppf(ALPHA / (2 * ROWS), RUNS, SIZE / ROWS)
    high = stats.binom.isf(ALPHA / (2 * ROWS), RUNS, SIZE / ROWS)
    assert 300 < low < high < 500
    outside = np.flatnonzero((inclusion_counts < low) | (inclusion_counts > high))
    assert outside.size == 0, (low, high, inclusion_counts[outside], outside)


def test_early_and_late_rows_equally_likely(inclusion_counts):
    # The rows that fill the reservoir and the rows that replace them: a "first hit wins"
    # or off-by-one slip would skew one of the halves.
    first, second = inclusion_counts[:SIZE].sum(), inclusion_counts[SIZE:].sum()
    expected_first = RUNS * SIZE * SIZE / ROWS
    sd = np.sqrt(expected_first * (1 - SIZE / ROWS))  # loose: ignores negative covariance
    assert abs(first - expected_first) < 6 * sd
    assert first + second == RUNS * SIZE


# -- bad rows ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "where"), [
    (np.nan, "features"), (np.inf, "features"), (-np.inf, "features"),
    (np.nan, "labels"), (np.inf, "labels"),
])
def test_non_finite_row_in_first_batch(rng, value, where):
    X = rng.standard_normal((20, 4)).astype(np.float32)
    y = np.zeros(20, dtype=np.float32)
    if where == "features":
        X[13, 2] = value
    else:
        y[13] = value
    with pytest.raises(DataError, match=r"row 13 \(0-based"):
        ReservoirSampler(5).add(X, y)


@pytest.mark.parametrize("where", ["features", "labels"])
def test_non_finite_rows_named_by_global_row_number_across_batches(rng, where):
    X = rng.standard_normal((30, 4)).astype(np.float32)
    y = np.ones(30, dtype=np.float32)
    sampler = ReservoirSampler(100)
    sampler.add(X[:10], y[:10])
    sampler.add(X[10:17], y[10:17])
    X2, y2 = X[17:].copy(), y[17:].copy()
    if where == "features":
        X2[3, 0], X2[8, 3] = np.nan, np.inf   # rows 20 and 25 of the stream
    else:
        y2[3], y2[8] = np.nan, -np.inf
    with pytest.raises(DataError) as info:
        sampler.add(X2, y2)
    message = str(info.value)
    assert "rows 20, 25 (0-based" in message, message
    assert "NaN or infinite" in message
    assert "more" not in message


def test_many_bad_rows_are_summarised(rng):
    X = rng.standard_normal((40, 2)).astype(np.float32)
    X[5:30, 1] = np.nan
    sampler = ReservoirSampler(5)
    sampler.add(np.zeros((100, 2), dtype=np.float32))
    with pytest.raises(DataError) as info:
        sampler.add(X)
    message = str(info.value)
    assert "rows 105, 106, 107, 108, 109, 110, 111, 112, 113, 114 and 15 more (0-based" in message


def test_a_refused_batch_does_not_advance_the_row_count(rng):
    X = rng.standard_normal((10, 2)).astype(np.float32)
    bad = X.copy()
    bad[4, 0] = np.nan
    sampler = ReservoirSampler(100)
    sampler.add(X)
    with pytest.raises(DataError, match="row 14 "):
        sampler.add(bad)
    assert sampler.rows_seen == 10
    np.testing.assert_array_equal(sampler.result()[2], np.arange(10))


def test_feature_count_change_between_batches(rng):
    sampler = ReservoirSampler(10)
    sampler.add(rng.standard_normal((8, 4)))
    with pytest.raises(DataError,
                       match=r"from row 8 \(0-based\) have 5 features; earlier rows had 4"):
        sampler.add(rng.standard_normal((3, 5)))


@pytest.mark.parametrize("labels_first", [True, False])
def test_labels_must_always_or_never_be_given(rng, labels_first):
    sampler = ReservoirSampler(10)
    y = np.zeros(6, dtype=np.float32)
    sampler.add(rng.standard_normal((6, 3)), y if labels_first else None)
    state = "missing" if labels_first else "present"
    with pytest.raises(DataError, match=rf"labels are {state} from row 6 \(0-based\)"):
        sampler.add(rng.standard_normal((6, 3)), None if labels_first else y)


@pytest.mark.parametrize("shape", [(5,), (4,), (6, 1)])
def test_label_shape_must_match(rng, shape):
    with pytest.raises(DataError, match=r"labels must have shape \(6,\)"):
        ReservoirSampler(10).add(rng.standard_normal((6, 3)), np.zeros(shape))


@pytest.mark.parametrize("shape", [(6,), (2, 3, 4)])
def test_features_must_be_2d(shape):
    with pytest.raises(DataError, match="must be 2-D"):
        ReservoirSampler(10).add(np.zeros(shape))


def test_empty_stream():
    with pytest.raises(DataError, match="no rows"):
        ReservoirSampler(10).result()


def test_stream_of_empty_batches():
    sampler = ReservoirSampler(10)
    sampler.add(np.zeros((0, 3)), np.zeros(0))
    sampler.add(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(DataError, match="no rows"):
        sampler.result()


# -- memory -----------------------------------------------------------------------------------
def test_huge_sample_size_allocates_only_what_is_kept(rng):
    X = rng.standard_normal((100, 64)).astype(np.float32)
    y = rng.standard_normal(100).astype(np.float32)
    tracemalloc.start()
    try:
        sampler = ReservoirSampler(10**9, seed=0)
        for start in range(0, 100, 30):
            sampler.add(X[start:start + 30], y[start:start + 30])
        features, labels, ids = sampler.result()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 10**9 rows of 64 float32 would be 256 GB; the rows kept take 26 kB.
    assert peak < 4 << 20, f"peak {peak} bytes"
    np.testing.assert_array_equal(ids, np.arange(100))
    np.testing.assert_array_equal(features, X)
    np.testing.assert_array_equal(labels, y)


@pytest.mark.parametrize("size", [50, 1500, 5000])
def test_taking_the_sample_gives_the_copy_s_answer_without_a_copy(data, size):
    """result(take=True) hands the buffer itself over, trimmed and in stream order: the
    same rows, labels and ids as result(), and the sampler takes no more rows."""
    X, y = data
    samplers = [ReservoirSampler(size, seed=3), ReservoirSampler(size, seed=3)]
    for sampler in samplers:
        for start in range(0, len(X), 700):
            sampler.add(X[start:start + 700], y[start:start + 700])
    buffer = samplers[1]._features
    copied, taken = samplers[0].result(), samplers[1].result(take=True)
    for want, got in zip(copied, taken, strict=True):
        np.testing.assert_array_equal(got, want)
    assert taken[0] is buffer  # the sampler's own array, resized in place, not a copy
    assert (np.diff(taken[2]) > 0).all()
    with pytest.raises(RuntimeError, match="the sample was taken"):
        samplers[1].add(X[:10], y[:10])
