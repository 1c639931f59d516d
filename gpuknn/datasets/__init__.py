"""Real data sets bundled with gpuknn (see ATTRIBUTION.md beside this file).

Each loader returns ``(X_train, y_train, X_test, y_test)``: float32 features of
shape (n, n_features) and float32 labels of shape (n,).
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _read(name: str) -> bytes:
    return gzip.decompress(resources.files(__name__).joinpath(name).read_bytes())


def load_letter() -> Split:
    """UCI Letter Recognition: 16,000 train / 4,000 test rows, 16 features, labels 0-25 (A-Z)."""
    lines = _read("letter-recognition.data.gz").decode("ascii").splitlines()[1:]
    letters = np.array([line[0] for line in lines])
    X = np.array([line.split(",")[1:] for line in lines], dtype=np.float32)
    y = (letters.view(np.int32) - ord("A")).astype(np.float32)
    return X[:16000], y[:16000], X[16000:], y[16000:]


def load_mnist(n_train: int = 8000) -> Split:
    """MNIST t10k: the first ``n_train`` rows train, the rest test; 784 pixel features (0-255)."""
    images = _read("mnist-t10k-images-idx3-ubyte.gz")
    labels = _read("mnist-t10k-labels-idx1-ubyte.gz")
    X = np.frombuffer(images, dtype=np.uint8, offset=16).reshape(-1, 784).astype(np.float32)
    y = np.frombuffer(labels, dtype=np.uint8, offset=8).astype(np.float32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]
