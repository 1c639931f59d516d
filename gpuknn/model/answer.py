"""What one search answers: :class:`Answer`, the arrays a server and a batch transform
serialise, sliced per request and assembled per chunk of queries."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


@dataclass(frozen=True)
class Answer:
    """The result of one search, as :meth:`KNNModel.answer` returns it (host arrays).

    Attributes
    ----------
    predicted_label : ndarray of shape (n_queries,), float32, or None
        Majority vote or mean; None for a model without labels.
    distances : ndarray of shape (n_queries, k), float32
        Nearest first, in the convention of :mod:`gpuknn.metrics`.
    ids : ndarray of shape (n_queries, k), int64
        Training-row ids of the neighbours.
    labels : ndarray of shape (n_queries, k), float32, or None
        The neighbours' labels.
    probabilities : ndarray of shape (n_queries, n_classes), float32, or None
        Vote shares per class (columns follow ``KNNModel.classes_``); classifiers only.
    """

    predicted_label: np.ndarray | None
    distances: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None
    probabilities: np.ndarray | None

    def allocate(self, n_rows: int) -> Answer:
        """An empty answer for ``n_rows`` queries with this one's fields, dtypes and widths."""
        return Answer(**{field.name: None if value is None else
                         np.empty((n_rows, *value.shape[1:]), dtype=value.dtype)
                         for field, value in self._items()})

    def fill(self, start: int, part: Answer) -> None:
        """Copy ``part``, the answer of queries ``start`` onwards, into this one."""
        for field, value in part._items():
            if value is not None:
                getattr(self, field.name)[start:start + len(value)] = value

    def _items(self):
        return [(field, getattr(self, field.name)) for field in fields(self)]

    def rows(self, selection: slice) -> Answer:
        """The answer for a contiguous run of the queries."""
        def take(array):
            return None if array is None else array[selection]

        return Answer(take(self.predicted_label), self.distances[selection],
                      self.ids[selection], take(self.labels), take(self.probabilities))
