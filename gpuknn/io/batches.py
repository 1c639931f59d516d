"""What training does to decoded batches before sampling them.

:func:`describe_csv` logs (and checks against ``feature_dim``) the layout the first CSV
batch settled on; :func:`densify` turns a sparse batch dense, refusing one that cannot fit
in memory. Shared by ``KNN.fit``, ``gpuknn train`` and the Ray hosts' sampling tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from gpuknn import _backend
from gpuknn.errors import DataError, HyperparameterError
from gpuknn.io.text import label_column_hint

logger = logging.getLogger("gpuknn")
Batch = tuple[Any, Any]


def describe_csv(batches: Iterable[Batch], name: str, feature_dim: int | str = "auto",
                 role: str = "train") -> Iterator[Batch]:
    """Pass CSV batches through, logging the layout the first batch settled on.

    The log line says which column is the label and how many features a row holds
    ("CSV: column 1 is the label, 16 features per row"): with ``feature_dim`` "auto",
    a CSV without its label column trains with its first feature as the label, and
    this line is where that shows.

    Parameters
    ----------
    batches : iterable of (X, y)
        Decoded CSV batches (``y`` None without a label column).
    name : str
        The source, for the log and error messages.
    feature_dim : int or "auto"
        Checked against the first batch; a width off by exactly the label column asks
        whether the label column was left out.
    role : {"train", "test"}
        Which data this is, for that question.

    Raises
    ------
    HyperparameterError
        When ``feature_dim`` is an integer other than the data's feature count.
    """
    first = True
    for X, y in batches:
        if first:
            _check_csv_layout(X.shape[1], y is not None, name, feature_dim, role)
            first = False
        yield X, y


def _check_csv_layout(width: int, labelled: bool, name: str, feature_dim: int | str,
                      role: str) -> None:
    label = "column 1 is the label" if labelled else "no label column (label_size=0)"
    logger.info("%s: CSV: %s, %d features per row", name, label, width)
    if feature_dim in ("auto", width):
        return
    columns = f"{width + 1} columns, the first one the label" if labelled else \
        f"{width} columns, no label"
    hint = label_column_hint(width, feature_dim, role) if labelled else ""
    raise HyperparameterError([f"'feature_dim' is {feature_dim} but {name} has {width} "
                               f"features per row ({columns}).{hint}"])


def densify(features: sp.spmatrix, feature_dim: int | str = "auto") -> np.ndarray:
    """A sparse batch as a dense array, refused before allocating when it cannot fit.

    Parameters
    ----------
    features : scipy.sparse matrix of shape (n_rows, width)
    feature_dim : int or "auto"
        The ``feature_dim`` hyperparameter, checked against ``width``.

    Returns
    -------
    ndarray of shape (n_rows, width)

    Raises
    ------
    HyperparameterError
        When its width disagrees with ``feature_dim``.
    DataError
        When the dense batch would need more memory than is available.
    """
    rows, width = features.shape
    if feature_dim not in ("auto", width):
        raise HyperparameterError([f"'feature_dim' is {feature_dim} but the sparse data's "
                                   f"shape is [{width}]"])
    needed = rows * width * 4
    available = _backend.available_memory()
    if available is not None and needed > available // 2:
        raise DataError(f"sparse rows of shape [{width}] densify to {needed / 2**30:.1f} GiB "
                        f"per batch of {rows} rows, more than half the "
                        f"{available / 2**30:.1f} GiB available; check the records' shape, "
                        "or lower mini_batch_size")
    return features.toarray()
