"""Sampling parts of a data set on several hosts, and merging the samples (no Ray needed).

The merge must give a uniform sample without replacement of the whole data, whatever the
parts' sizes: checked with chi-square tests over many seeds, against a deliberately
biased merge that the same tests must reject.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gpuknn.distributed import parts as parts_
from gpuknn.distributed.merge import HostSample, allocate, merge
from gpuknn.distributed.settings import ClusterSettings
from gpuknn.errors import ClientError, DataError
from gpuknn.sampling import ReservoirSampler

ROWS = (200, 20)  # 10:1 unequal hosts
SAMPLE = 30
TRIALS = 3000


def host_samples(rows: tuple[int, ...], sample_size: int, seed: int) -> list[HostSample]:
    """Each host reservoir-samples its rows; feature 0 of a row is its global id."""
    samples, first = [], 0
    for rank, count in enumerate(rows):
        if count == 0:  # an empty part, as a host whose shard holds no objects sends it
            samples.append(HostSample(rank, len(rows), f"algo-{rank + 1}", 0,
                                      parts_.OWN_FILES, None, None, np.empty(0, np.int64)))
            continue
        sampler = ReservoirSampler(sample_size, seed=seed, host=rank)
        X = (first + np.arange(count, dtype=np.float32))[:, None]
        sampler.add(X, np.zeros(count, dtype=np.float32))
        features, labels, ids = sampler.result()
        samples.append(HostSample(rank, len(rows), f"algo-{rank + 1}", count,
                                  parts_.OWN_FILES, features, labels, ids))
        first += count
    return samples


def biased_merge(samples: list[HostSample], sample_size: int, seed: int) -> np.ndarray:
    """A wrong merge: half the sample from each host, whatever its size."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0, *[s.rows for s in samples]])
    picked = [offset + rng.choice(s.ids, size=sample_size // len(samples), replace=False)
              for s, offset in zip(samples, offsets, strict=False)]
    return np.concatenate(picked)


def inclusion_p_value(draws: list[np.ndarray], n_rows: int) -> float:
    """Chi-square p-value that every row is drawn equally often."""
    counts = np.bincount(np.concatenate(draws), minlength=n_rows)
    return stats.chisquare(counts).pvalue


def test_the_merged_sample_takes_every_row_with_equal_probability():
    n_rows = sum(ROWS)
    merged, biased = [], []
    for seed in range(TRIALS):
        samples = host_samples(ROWS, SAMPLE, seed)
        result = merge(samples, SAMPLE, seed)
        assert len(result.ids) == SAMPLE and len(np.unique(result.ids)) == SAMPLE
        assert np.all(np.diff(result.ids) > 0)
        np.testing.assert_array_equal(result.features[:, 0], result.ids)  # rows kept whole
        merged.append(result.ids)
        biased.append(biased_merge(samples, SAMPLE, seed))
    # 220 cells, 409 expected draws each: a fair merge passes, the biased one (the small
    # host's rows drawn 5.5x too often) is rejected with overwhelming confidence.
    assert inclusion_p_value(merged, n_rows) > 1e-3
    assert inclusion_p_value(biased, n_rows) < 1e-12


def test_the_small_host_gives_a_hypergeometric_share():
    """How many rows come from the 20-row host: hypergeometric(220, 20, 30), by chi-square."""
    taken = np.array([allocate(ROWS, SAMPLE, np.random.default_rng(seed))[1]
                      for seed in range(TRIALS)])
    support = np.arange(0, 9)  # P(X >= 9) ~ 2e-4: pooled into the last cell
    expected = stats.hypergeom(sum(ROWS), ROWS[1], SAMPLE).pmf(support)
    expected[-1] += stats.hypergeom(sum(ROWS), ROWS[1], SAMPLE).sf(support[-1])
    observed = np.bincount(np.minimum(taken, support[-1]), minlength=len(support))
    assert stats.chisquare(observed, expected * TRIALS).pvalue > 1e-3


def test_allocation_sums_to_the_sample_and_respects_each_host():
    rng = np.random.default_rng(1)
    for _ in range(200):
        rows = rng.integers(0, 50, size=rng.integers(1, 6))
        if rows.sum() == 0:
            continue
        size = int(rng.integers(1, 100))
        counts = allocate(rows, size, rng)
        assert counts.sum() == min(size, rows.sum())
        assert np.all(counts <= rows) and np.all(counts >= 0)


def test_a_sample_larger_than_the_data_keeps_every_row_in_order():
    samples = host_samples((7, 3, 0, 5), 100, seed=4)
    result = merge(samples, 100, seed=4)
    np.testing.assert_array_equal(result.ids, np.arange(15))
    np.testing.assert_array_equal(result.features[:, 0], np.arange(15))
    assert result.rows_seen == 15


def test_same_samples_and_seed_give_the_same_merge():
    a = merge(host_samples(ROWS, SAMPLE, 5), SAMPLE, 5)
    b = merge(host_samples(ROWS, SAMPLE, 5), SAMPLE, 5)
    c = merge(host_samples(ROWS, SAMPLE, 6), SAMPLE, 6)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert not np.array_equal(a.ids, c.ids)


def test_hosts_that_disagree_are_named():
    samples = host_samples((5, 5), 10, seed=0)
    samples[1].features = np.zeros((5, 3), dtype=np.float32)
    with pytest.raises(DataError, match="algo-2 has rows of 3 features; algo-1 has 1"):
        merge(samples, 10, 0)
    samples = host_samples((5, 5), 10, seed=0)
    samples[0].labels = None
    with pytest.raises(DataError, match="algo-2 has labels but algo-1 has none"):
        merge(samples, 10, 0)
    with pytest.raises(DataError, match="holds no rows"):
        merge(host_samples((0, 0), 10, seed=0), 10, 0)


def _write_csv_files(directory, counts, width=3):
    directory.mkdir(parents=True, exist_ok=True)
    rows, first = [], 0
    for index, count in enumerate(counts):
        X = (first + np.arange(count))[:, None] * np.ones(width)
        np.savetxt(directory / f"part-{index}.csv", np.column_stack([np.zeros(count), X]),
                   delimiter=",", fmt="%d")
        rows.append(X)
        first += count
    return np.concatenate(rows).astype(np.float32)


@pytest.mark.parametrize(("counts", "hosts", "how"), [
    ((4, 6, 5, 7, 3), 2, parts_.FILE_BLOCKS),
    ((4, 6, 5), 3, parts_.FILE_BLOCKS),
    ((23,), 2, parts_.ROW_STRIPES),
    ((10, 11), 3, parts_.ROW_STRIPES),
])
def test_replicated_parts_tile_the_data_with_single_host_row_ids(tmp_path, counts, hosts, how):
    """FullyReplicated: the hosts' parts are disjoint, cover every row, and the merged ids
    are the row numbers one host reading every file would give."""
    everything = _write_csv_files(tmp_path / "train", counts)
    samples = []
    for rank in range(hosts):
        part = parts_.Part(rank, hosts, str(tmp_path / "train"), parts_.REPLICATED)
        files, taken = part.files()
        assert taken == how
        sampler = ReservoirSampler(1000, seed=0, host=rank)
        for X, y in parts_.part_batches(part, files, taken, content_type="text/csv",
                                        batch_size=4):
            sampler.add(X, y)
        features, labels, ids = sampler.result()
        samples.append(HostSample(rank, hosts, f"algo-{rank + 1}", sampler.rows_seen, taken,
                                  features, labels, ids))
    result = merge(samples, 1000, seed=0)
    np.testing.assert_array_equal(result.ids, np.arange(sum(counts)))
    np.testing.assert_array_equal(result.features, everything)


def test_a_sharded_host_without_data_has_an_empty_part(tmp_path):
    part = parts_.Part(1, 2, str(tmp_path / "nothing"), parts_.SHARDED)
    assert part.files() == ([], parts_.OWN_FILES)
    with pytest.raises(DataError, match="no such file"):
        parts_.Part(1, 2, str(tmp_path / "nothing"), parts_.REPLICATED).files()


@pytest.mark.parametrize(("environ", "message"), [
    ({"GPUKNN_RAY_PORT": "http"}, "$GPUKNN_RAY_PORT='http': must be an integer in 1..65535"),
    ({"GPUKNN_RAY_PORT": "70000"}, "$GPUKNN_RAY_PORT=70000"),
    ({"GPUKNN_HOST_TIMEOUT_S": "-1"}, "$GPUKNN_HOST_TIMEOUT_S=-1.0: must be a number"),
    ({"GPUKNN_HOST_ADDRESSES": "algo-1"}, "'algo-1' is not host=address"),
])
def test_cluster_settings_name_the_variable(environ, message):
    with pytest.raises(ClientError) as caught:
        ClusterSettings.from_environ(environ)
    assert message in str(caught.value)


def test_cluster_settings_defaults_and_mapping():
    settings = ClusterSettings.from_environ(
        {"GPUKNN_HOST_ADDRESSES": "algo-1=127.0.0.1, algo-2=127.0.0.2"})
    assert (settings.port, settings.timeout_s) == (6379, 300.0)
    assert settings.address_of("algo-2") == "127.0.0.2"
