"""Uniform reservoir sampling from a stream of mini-batches.

:class:`ReservoirSampler` keeps a uniform sample without replacement of
``sample_size`` rows (Vitter's Algorithm R, vectorised per batch) and the row
numbers they had in the stream. Memory is ``O(sample_size * n_features)``
whatever the stream's length. The random draws depend only on the seed and the
row numbers, not on how the stream is cut into batches.
"""

from __future__ import annotations

import numpy as np

from gpuknn._permute import permute_rows
from gpuknn.errors import DataError

_SEED_STREAM = 1  # the projections use stream 2 of the same seed
MAX_ROWS_NAMED = 10


class ReservoirSampler:
    """Keep a uniform sample of rows from batches seen one after another.

    Parameters
    ----------
    sample_size : int
        Rows to keep; a stream with fewer rows is kept whole.
    seed : int
        Seed of the draws.
    host : int, optional
        The host's rank when several hosts sample parts of one data set: each draws from
        its own stream of the seed. None (one host) keeps the single-host stream.
    """

    def __init__(self, sample_size: int, seed: int = 0, host: int | None = None):
        self.sample_size = int(sample_size)
        self.rows_seen = 0
        stream = [seed, _SEED_STREAM] if host is None else [seed, _SEED_STREAM, host]
        self._rng = np.random.default_rng(stream)
        self._features: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._filled = 0
        self._taken = False

    def add(self, X: np.ndarray, y: np.ndarray | None = None) -> None:
        """Offer the next batch of rows to the sample.

        Parameters
        ----------
        X : ndarray of shape (n_rows, n_features), float32
        y : ndarray of shape (n_rows,), float32, optional
            Labels; either always or never given.

        Raises
        ------
        DataError
            For a row with NaN or infinite values (named by its row number in the
            stream), a change of feature count, or labels that come and go.
        """
        if self._taken:
            raise RuntimeError("the sample was taken (result(take=True)): start a new sampler")
        X = np.asarray(X, dtype=np.float32)
        self._check(X, y)
        if self._features is None:
            self._allocate(X.shape[1], y is not None)
        first_id = self.rows_seen
        self.rows_seen += X.shape[0]
        take = min(self.sample_size - self._filled, X.shape[0])
        if take:
            self._ensure_capacity(self._filled + take)
            labels = None if y is None else y[:take]
            self._store(np.arange(self._filled, self._filled + take), X[:take], labels, first_id, 0)
            self._filled += take
        if take < X.shape[0]:
            self._replace(X[take:], None if y is None else y[take:], first_id + take)

    def _check(self, X: np.ndarray, y: np.ndarray | None) -> None:
        if X.ndim != 2:
            raise DataError(f"a batch of features must be 2-D (rows, features); "
                            f"got shape {X.shape}")
        if self._features is not None and X.shape[1] != self._features.shape[1]:
            raise DataError(f"rows from row {self.rows_seen} (0-based) have {X.shape[1]} "
                            f"features; earlier rows had {self._features.shape[1]}")
        if self._features is not None and (y is None) != (self._labels is None):
            raise DataError(f"labels are {'missing' if y is None else 'present'} from row "
                            f"{self.rows_seen} (0-based) but were not before")
        if y is not None and np.shape(y) != (X.shape[0],):
            raise DataError(f"labels must have shape ({X.shape[0]},) to match the features "
                            f"starting at row {self.rows_seen} (0-based); got {np.shape(y)}")
        bad = ~np.isfinite(X).all(axis=1)
        if y is not None:
            bad |= ~np.isfinite(np.asarray(y, dtype=np.float64))
        if bad.any():
            rows = np.flatnonzero(bad) + self.rows_seen
            shown = ", ".join(map(str, rows[:MAX_ROWS_NAMED]))
            more = f" and {rows.size - MAX_ROWS_NAMED} more" if rows.size > MAX_ROWS_NAMED else ""
            noun = "row" if rows.size == 1 else "rows"
            raise DataError(f"rows with NaN or infinite values (features or label) are not "
                            f"allowed: {noun} {shown}{more} (0-based, counted over the whole "
                            "input)")

    def _allocate(self, n_features: int, with_labels: bool) -> None:
        size = min(self.sample_size, 1024)
        self._features = np.empty((size, n_features), dtype=np.float32)
        self._labels = np.empty(size, dtype=np.float32) if with_labels else None
        self._ids = np.empty(size, dtype=np.int64)

    def _ensure_capacity(self, rows: int) -> None:
        """Grow the buffers geometrically (never past ``sample_size``) to hold ``rows``."""
        capacity = self._features.shape[0]
        if rows <= capacity:
            return
        capacity = min(self.sample_size, max(rows, 2 * capacity))
        self._features = _resized(self._features, capacity)
        self._ids = _resized(self._ids, capacity)
        if self._labels is not None:
            self._labels = _resized(self._labels, capacity)

    def _store(self, slots, X, y, first_id: int, offset: int) -> None:
        self._features[slots] = X
        if y is not None:
            self._labels[slots] = np.asarray(y, dtype=np.float32)
        self._ids[slots] = first_id + offset + np.arange(X.shape[0])

    def _replace(self, X: np.ndarray, y: np.ndarray | None, first_id: int) -> None:
        """Algorithm R: row ``i`` (0-based) replaces slot ``j ~ U[0, i]`` when ``j < size``."""
        stream_index = first_id + np.arange(X.shape[0], dtype=np.float64)
        draws = np.floor(self._rng.random(X.shape[0]) * (stream_index + 1)).astype(np.int64)
        hits = np.flatnonzero(draws < self.sample_size)
        if hits.size == 0:
            return
        # When several rows of a batch land in one slot, the last one wins, as in sequence.
        slots_reversed = draws[hits][::-1]
        unique_slots, first_in_reversed = np.unique(slots_reversed, return_index=True)
        winners = hits[::-1][first_in_reversed]
        self._features[unique_slots] = X[winners]
        if y is not None:
            self._labels[unique_slots] = np.asarray(y, dtype=np.float32)[winners]
        self._ids[unique_slots] = first_id + winners

    def result(self, *, take: bool = False) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The sample, in the order of the stream.

        Parameters
        ----------
        take : bool
            Hand the sampler's own buffer over, trimmed and put in order in place, instead
            of a copy: training's way, so that the sample is never held twice. The sampler
            takes no rows after that.

        Returns
        -------
        features : ndarray of shape (n_kept, n_features), float32
        labels : ndarray of shape (n_kept,), float32, or None
        ids : ndarray of shape (n_kept,), int64
            Row numbers of the kept rows in the stream (0-based), increasing.

        Raises
        ------
        DataError
            When no row was seen.
        """
        if self._features is None or self._filled == 0:
            raise DataError("the training data holds no rows")
        kept = self._filled
        order = np.argsort(self._ids[:kept], kind="stable")
        labels = None if self._labels is None else self._labels[:kept][order]
        if not take:
            return self._features[:kept][order], labels, self._ids[:kept][order]
        features, ids = _resized(self._features, kept), self._ids[:kept][order]
        self._features = self._labels = self._ids = None  # the sampler's buffers go now
        permute_rows(features, order)
        self._taken = True
        return features, labels, ids


def _resized(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with room for ``rows`` rows, keeping its first rows: resized in place where
    numpy can (a large buffer is then remapped by the allocator, not copied), else a copy."""
    if array.shape[0] == rows:
        return array
    if array.flags.owndata and array.flags.c_contiguous:
        array.resize((rows, *array.shape[1:]), refcheck=False)  # no view of it is ever kept
        return array
    bigger = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
    kept = min(rows, array.shape[0])
    bigger[:kept] = array[:kept]
    return bigger
