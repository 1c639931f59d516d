"""One uniform sample of the whole data from the hosts' samples of their parts (numpy only).

Each host keeps a uniform reservoir sample (without replacement) of ``min(s, n_h)`` of
its ``n_h`` rows. The leader then draws how many of the ``s`` rows of the merged sample
come from each host, ``m ~ MultivariateHypergeometric(n_1 .. n_H; s)``: exactly the counts
a uniform ``s``-subset of all ``N = sum(n_h)`` rows would have. From host ``h`` it keeps
a uniform ``m_h``-subset of that host's reservoir (``m_h <= min(s, n_h)`` always). A
uniform subset of a uniform subset is uniform, so every ``s``-subset of the data is
equally likely, whatever the parts' sizes. Only the reservoirs travel, never the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gpuknn.distributed.parts import global_ids
from gpuknn.errors import DataError

_MERGE_STREAM = 3  # the seed's streams: 1 sampling, 2 projections, 3 this merge


@dataclass
class HostSample:
    """What one host sends the leader: its reservoir and how many rows it read.

    Attributes
    ----------
    rank, hosts : int
    name : str
        The host (``algo-2``) or shard (a path), for messages.
    rows : int
        Rows in the host's part.
    how : str
        How the host took its rows (:mod:`gpuknn.distributed.parts`).
    features : ndarray of shape (n_kept, n_features), float32, or None
        None when the part holds no rows.
    labels : ndarray of shape (n_kept,), float32, or None
    ids : ndarray of shape (n_kept,), int64
        Row numbers within the part, increasing.
    files : tuple of (str, int)
        Every file of the host's source, with its size (to check that hosts of a
        ``FullyReplicated`` channel saw the same files).
    """

    rank: int
    hosts: int
    name: str
    rows: int
    how: str
    features: np.ndarray | None
    labels: np.ndarray | None
    ids: np.ndarray
    files: tuple[tuple[str, int], ...] = ()


@dataclass
class MergedSample:
    """The merged sample, in row-id order."""

    features: np.ndarray
    labels: np.ndarray | None
    ids: np.ndarray
    rows_seen: int
    first_ids: list[int]


def allocate(rows: Sequence[int], sample_size: int, rng: np.random.Generator) -> np.ndarray:
    """How many sampled rows each host gives: the per-host counts of a uniform sample.

    Parameters
    ----------
    rows : sequence of int
        Rows per host.
    sample_size : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of shape (n_hosts,), int64
        Sums to ``min(sample_size, sum(rows))``; entry ``h`` is at most ``rows[h]``.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if sample_size >= rows.sum():
        return rows.copy()
    return rng.multivariate_hypergeometric(rows, sample_size, method="marginals")


def merge(samples: Sequence[HostSample], sample_size: int, seed: int) -> MergedSample:
    """Merge the hosts' reservoirs into one uniform sample of the whole data.

    Parameters
    ----------
    samples : sequence of HostSample
        One per host, in rank order.
    sample_size : int
    seed : int
        The job's seed: the same samples and seed give the same result.

    Returns
    -------
    MergedSample

    Raises
    ------
    DataError
        When no host has rows, or hosts disagree on the feature count or on labels.
    """
    present = [s for s in samples if s.rows]
    if not present:
        raise DataError("the training data holds no rows (on any host)")
    _check_agree(present)
    rng = np.random.default_rng([seed, _MERGE_STREAM])
    take = allocate([s.rows for s in samples], sample_size, rng)
    offsets = np.concatenate([[0], np.cumsum([s.rows for s in samples])[:-1]])
    features, labels, ids = [], [], []
    for sample, count, offset in zip(samples, take, offsets, strict=True):
        if not count:
            continue
        kept = np.sort(rng.choice(len(sample.ids), size=int(count), replace=False))
        features.append(sample.features[kept])
        labels.append(None if sample.labels is None else sample.labels[kept])
        ids.append(global_ids(sample.ids[kept], sample.rank, sample.hosts, sample.how,
                              int(offset)))
    merged_ids = np.concatenate(ids)
    order = np.argsort(merged_ids, kind="stable")
    merged_labels = None if labels[0] is None else np.concatenate(labels)[order]
    return MergedSample(np.concatenate(features)[order], merged_labels, merged_ids[order],
                        int(sum(s.rows for s in samples)), [int(o) for o in offsets])


def _check_agree(samples: Sequence[HostSample]) -> None:
    first = samples[0]
    for other in samples[1:]:
        if other.features.shape[1] != first.features.shape[1]:
            raise DataError(f"{other.name} has rows of {other.features.shape[1]} features; "
                            f"{first.name} has {first.features.shape[1]}: every host's data "
                            "must have the same feature count")
        if (other.labels is None) != (first.labels is None):
            has, lacks = (first, other) if other.labels is None else (other, first)
            raise DataError(f"{has.name} has labels but {lacks.name} has none: every host's "
                            "data must carry labels, or none")
