"""gpuknn: SageMaker-compatible k-NN classification and regression, on CPU or GPU.

>>> from gpuknn import KNN, KNNModel  # doctest: +SKIP
>>> est = KNN(k=10, sample_size=200_000, predictor_type="classifier").fit(X, y)  # doctest: +SKIP
>>> est.predict(Q)  # doctest: +SKIP
"""

from gpuknn._version import __version__
from gpuknn.errors import (
    ClientError,
    DataError,
    DeviceError,
    GpuknnError,
    HyperparameterError,
    ModelFileError,
    NotFittedError,
)
from gpuknn.estimator import KNN
from gpuknn.hyperparameters import Hyperparameters
from gpuknn.io import record_set
from gpuknn.model import KNNModel

__all__ = [
    "KNN",
    "ClientError",
    "DataError",
    "DeviceError",
    "GpuknnError",
    "HyperparameterError",
    "Hyperparameters",
    "KNNModel",
    "ModelFileError",
    "NotFittedError",
    "__version__",
    "record_set",
]
