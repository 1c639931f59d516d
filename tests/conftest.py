"""Shared fixtures: the array module (numpy always, cupy on a GPU), seeded RNGs, data sets."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _wire import find_sdk_python

from gpuknn import _backend
from gpuknn.datasets import load_letter, load_mnist


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when no GPU is usable; the test bodies never check."""
    if _backend.has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: numpy, and cupy where a GPU exists."""
    if request.param == "numpy":
        return np
    return _backend.array_module("gpu")


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different per test."""
    seed = sum(request.node.name.encode()) * 7919
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def letter():
    """UCI letter recognition: (X_train, y_train, X_test, y_test), 16,000 / 4,000 rows."""
    return load_letter()


@pytest.fixture(scope="session")
def mnist():
    """MNIST t10k split 8,000 / 2,000, features scaled to [0, 1]."""
    X_train, y_train, X_test, y_test = load_mnist()
    return X_train / 255.0, y_train, X_test / 255.0, y_test


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits: 1,500 train / 297 test rows, 64 features."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X.astype(np.float32), y.astype(np.float32)
    return X[:1500], y[:1500], X[1500:], y[1500:]


@pytest.fixture(scope="session")
def sdk_python():
    """The interpreter with the SageMaker SDK; skips (or fails, if configured) without."""
    python, why = find_sdk_python()
    if python is None:
        if os.environ.get("GPUKNN_SDK_PYTHON"):
            pytest.fail(why)  # asked for explicitly: a broken setting is an error
        pytest.skip(why)
    return python
