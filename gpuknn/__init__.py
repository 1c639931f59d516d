"""gpuknn: SageMaker-compatible k-NN classification and regression, on CPU or GPU.

>>> from gpuknn import KNN, KNNModel  # doctest: +SKIP
>>> est = KNN(k=10, sample_size=200_000, predictor_type="classifier").fit(X, y)  # doctest: +SKIP
>>> est.predict(Q)  # doctest: +SKIP

The public names are imported on first use, so ``import gpuknn.kernels`` (or any
light module) needs only numpy, and CuPy where it runs; scikit-learn is imported only by
``KNeighborsClassifier`` and ``KNeighborsRegressor`` (the ``sklearn`` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

from gpuknn._version import __version__

_PUBLIC = {
    "KNN": "gpuknn.estimator",
    "KNNModel": "gpuknn.model.knn_model",
    "KNeighborsClassifier": "gpuknn.neighbors",
    "KNeighborsRegressor": "gpuknn.neighbors",
    "Hyperparameters": "gpuknn.hyperparameters",
    "record_set": "gpuknn.io",
    "ClientError": "gpuknn.errors",
    "DataError": "gpuknn.errors",
    "DeviceError": "gpuknn.errors",
    "GpuknnError": "gpuknn.errors",
    "HyperparameterError": "gpuknn.errors",
    "ModelFileError": "gpuknn.errors",
    "NotFittedError": "gpuknn.errors",
}

__all__ = [  # noqa: RUF022 - grouped: the version, then _PUBLIC's names
    "__version__",
    "KNN", "KNNModel", "KNeighborsClassifier", "KNeighborsRegressor", "Hyperparameters",
    "record_set",
    "ClientError", "DataError", "DeviceError", "GpuknnError", "HyperparameterError",
    "ModelFileError", "NotFittedError",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpuknn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
