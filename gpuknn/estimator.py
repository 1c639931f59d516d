"""The :class:`KNN` estimator: SageMaker's k-NN training, in-process.

Training is sampling -> optional dimension reduction -> index building, as in
SageMaker. ``fit`` streams its input in ``mini_batch_size`` batches through the
reservoir sampler, so only the sample is ever held in memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

from gpuknn import _backend, io
from gpuknn import devices as device_choice
from gpuknn.errors import ClientError, DataError, NotFittedError
from gpuknn.hyperparameters import Hyperparameters, parse
from gpuknn.io.batches import densify, describe_csv
from gpuknn.model.build import build_model
from gpuknn.model.knn_model import KNNModel
from gpuknn.sampling import ReservoirSampler

logger = logging.getLogger("gpuknn")
Batch = tuple[Any, Any]


class KNN:
    """k-nearest-neighbour classifier or regressor with SageMaker's hyperparameters.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}
        Where to compute; "auto" picks the GPU when CuPy sees one.
    shards : int, optional
        Split the fitted index into this many shards, searched concurrently and merged
        (:meth:`KNNModel.sharded`): answers identical to the whole index's.
    devices : str or sequence of int, optional
        The GPUs the shards go to (:mod:`gpuknn.devices`: ``"all"``, ``"0,2"``).
    **hyperparameters
        Any SageMaker k-NN hyperparameter by name (``k``, ``predictor_type`` and
        ``sample_size`` are required), as Python values or strings. See
        :data:`gpuknn.hyperparameters.TABLE`.

    Attributes
    ----------
    model : KNNModel
        The fitted model (after :meth:`fit`).
    classes_ : ndarray of shape (n_classes,), float32
        Sorted labels seen in the sample (classifiers).
    device_ : str
        The device actually used, "cpu" or "gpu".

    Examples
    --------
    >>> import numpy as np
    >>> from gpuknn import KNN
    >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]], dtype=np.float32)
    >>> y = np.array([0, 0, 1, 1], dtype=np.float32)
    >>> est = KNN(k=1, predictor_type="classifier", sample_size=100, device="cpu").fit(X, y)
    >>> est.predict(np.array([[4.9, 5.2]], dtype=np.float32))
    array([1.], dtype=float32)
    """

    def __init__(self, *, device: str = "auto", shards: int | None = None,
                 devices: str | tuple[int, ...] | None = None, **hyperparameters: Any):
        self.device = device
        self.shards = _checked_shards(shards)
        self.devices = devices
        self.hyperparameters: Hyperparameters = parse(hyperparameters)
        self.model: KNNModel | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters and device, as given, defaults filled in.

        Parameters
        ----------
        deep : bool
            Accepted for scikit-learn's ``clone`` (there are no sub-estimators).
        """
        return {"device": self.device, "shards": self.shards, "devices": self.devices,
                **self.hyperparameters.to_dict()}

    def set_params(self, **params: Any) -> KNN:
        """Change the device or hyperparameters (validated at once, all together); a fitted
        model stays until the next :meth:`fit`.

        Raises
        ------
        HyperparameterError
            Listing every invalid value, as :class:`KNN` itself does.
        """
        self.device = params.pop("device", self.device)
        self.shards = _checked_shards(params.pop("shards", self.shards))
        self.devices = params.pop("devices", self.devices)
        self.hyperparameters = parse({**self.hyperparameters.to_dict(), **params})
        return self

    def fit(self, X: Any, y: Any = None, *, content_type: str = "application/x-recordio-protobuf",
            label_size: int | None = None, ray_address: str | None = None) -> KNN:
        """Sample the training rows, reduce them and build the index.

        Parameters
        ----------
        X : array of shape (n_rows, n_features), a data source, or an iterable of batches
            numpy or cupy arrays (any real dtype, converted to float32); or a file,
            directory, SageMaker manifest (see :func:`gpuknn.record_set`), named pipe or
            open binary file, streamed in ``mini_batch_size`` batches; or an iterable
            of ``(X, y)`` batches. Sparse batches are densified one batch at a time.
        y : array of shape (n_rows,), optional
            Labels (converted to float32). Needed by :meth:`predict`. Sources carry
            their own labels.
        content_type : str
            Format of a source: ``application/x-recordio-protobuf`` (default),
            ``text/csv`` (first column the label), JSON or JSON Lines.
        label_size : int, optional
            CSV label columns (default 1).
        ray_address : str, optional
            Sample on a Ray cluster (``pip install "gpuknn[ray]"``): ``host:port`` of its
            head, or ``"auto"``. A list of sources (``[shard, ...]``: files,
            directories, manifests) is always sampled on Ray, on a local cluster when
            no address is given. Each shard is read where the cluster runs it, sampled
            there, and only the samples travel; the model is the one multi-host
            ``gpuknn train`` builds with the shards as its hosts' ``ShardedByS3Key``
            data, for the same seed (row ids number the shards' rows in shard order).

        Returns
        -------
        self
        """
        if _is_shards(X) or ray_address is not None:
            return self._fit_on_ray(_as_shards(X, y), content_type, label_size, ray_address)
        started = time.perf_counter()
        device = _backend.resolve_device(self.device)
        hp = self.hyperparameters
        sampler = ReservoirSampler(hp.sample_size, seed=hp.seed)
        for features, labels in self._batches(X, y, content_type, label_size):
            if sp.issparse(features):
                features = densify(features, hp.feature_dim)  # noqa: PLW2901 - one batch
            sampler.add(features, labels)
        features, labels, ids = sampler.result(take=True)
        if labels is None and _is_source(X):
            raise DataError(f"{io.sources.name_of(X)}: the training data has no labels "
                            "(label[\"values\"] in RecordIO records, the first column of CSV "
                            "with label_size=1); k-NN predicts from the neighbours' labels")
        logger.info("sampled %d of %d rows in %.2f s", len(ids), sampler.rows_seen,
                    time.perf_counter() - started)
        self.model = self._placed(build_model(features, labels, ids, hp, device=device,
                                              rows_seen=sampler.rows_seen))
        return self

    def _placed(self, model: KNNModel) -> KNNModel:
        """The fitted model, split into :attr:`shards` on :attr:`devices` if asked."""
        if self.shards in (None, 1) and self.devices is None:
            return model
        ordinals = device_choice.resolve(self.devices, model.device)
        return model.sharded(self.shards or 1, devices=ordinals)

    def _fit_on_ray(self, shards: list[str], content_type: str, label_size: int | None,
                    ray_address: str | None) -> KNN:
        from gpuknn.distributed.fitting import fit_shards  # noqa: PLC0415 - needs Ray

        device = _backend.resolve_device(self.device)
        hp = self.hyperparameters
        merged = fit_shards(shards, content_type, hp, label_size, ray_address)
        if merged.labels is None:
            raise DataError(f"{', '.join(shards)}: the training data has no labels "
                            "(label[\"values\"] in RecordIO records, the first column of CSV "
                            "with label_size=1); k-NN predicts from the neighbours' labels")
        self.model = self._placed(build_model(merged.features, merged.labels, merged.ids,
                                              hp, device=device, rows_seen=merged.rows_seen))
        return self

    def _batches(self, X: Any, y: Any, content_type: str, label_size: int | None,
                 ) -> Iterator[Batch]:
        """Cut in-memory arrays into mini-batches, stream a source, or pass batches through."""
        batch_size = self.hyperparameters.mini_batch_size
        if _is_array(X):
            yield from _array_batches(X, y, batch_size)
            return
        if _is_source(X):
            if y is not None:
                raise DataError("y must be None when X is a data source: labels come from it")
            batches = io.iter_batches(X, content_type, batch_size, label_size)
            if io.parse_content_type(content_type)[0] == io.CSV:
                batches = describe_csv(batches, io.sources.name_of(X),
                                       self.hyperparameters.feature_dim)
            yield from batches
            return
        if y is not None:
            raise DataError("y must be None when X is an iterable of (X, y) batches")
        if not isinstance(X, Iterable):
            raise DataError(f"X must be an array or an iterable of (X, y) batches; got {type(X)}")
        for batch in X:
            features, labels = batch
            features = features if sp.issparse(features) else _backend.to_host(features)
            yield features, None if labels is None else _backend.to_host(labels)

    @property
    def fitted_model(self) -> KNNModel:
        """The model, or :class:`NotFittedError` before :meth:`fit`."""
        if self.model is None:
            raise NotFittedError("this KNN is not fitted yet: call fit(X, y) first")
        return self.model

    @property
    def classes_(self) -> np.ndarray | None:
        """Sorted labels seen in the sample."""
        return self.fitted_model.classes_

    @property
    def device_(self) -> str:
        """Device used by the fitted model."""
        return self.fitted_model.device

    def predict(self, X: Any) -> Any:
        """See :meth:`KNNModel.predict`."""
        return self.fitted_model.predict(X)

    def predict_proba(self, X: Any) -> Any:
        """See :meth:`KNNModel.predict_proba`."""
        return self.fitted_model.predict_proba(X)

    def kneighbors(self, X: Any, k: int | None = None) -> tuple[Any, Any]:
        """See :meth:`KNNModel.kneighbors`."""
        return self.fitted_model.kneighbors(X, k)

    def __repr__(self) -> str:
        given = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"KNN({given})"


def _is_source(X: Any) -> bool:
    """A path (file, directory, manifest, pipe) or an open binary file."""
    return isinstance(X, (str, os.PathLike)) or hasattr(X, "read")


def _is_shards(X: Any) -> bool:
    """A list or tuple of paths: the shards of a data set, sampled on Ray."""
    return isinstance(X, (list, tuple)) and bool(X) and all(
        isinstance(item, (str, os.PathLike)) for item in X)


def _as_shards(X: Any, y: Any) -> list[str]:
    if y is not None:
        raise DataError("y must be None when X is a list of shards: labels come from them")
    if _is_source(X) and not hasattr(X, "read"):
        return [str(X)]
    if not _is_shards(X):
        raise DataError("with ray_address, X must be a source path or a list of them "
                        f"(files, directories, manifests); got {type(X).__name__}")
    return [str(item) for item in X]


def _is_array(X: Any) -> bool:
    return hasattr(X, "shape") and hasattr(X, "dtype")


def _array_batches(X: Any, y: Any, batch_size: int) -> Iterator[Batch]:
    X_host = _backend.to_host(X)
    if X_host.dtype.kind not in "fiub":
        raise DataError(f"features must be numeric; got dtype {X_host.dtype}")
    if X_host.ndim != 2:
        raise DataError(f"features must be 2-D (rows, features); got shape {X_host.shape}")
    y_host = None if y is None else np.asarray(_backend.to_host(y))
    if y_host is not None and y_host.dtype.kind not in "fiub":
        raise DataError(f"labels must be numeric; got dtype {y_host.dtype}")
    if y_host is not None and y_host.shape != (X_host.shape[0],):
        raise DataError(f"y must have shape ({X_host.shape[0]},) to match X; got {y_host.shape}")
    for start in range(0, X_host.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        yield X_host[rows], None if y_host is None else y_host[rows]


def _checked_shards(shards: Any) -> int | None:
    """``shards`` as a positive int, or None.

    Raises
    ------
    ClientError
        For anything else.
    """
    if shards is None:
        return None
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ClientError(f"shards must be a positive integer or None; got {shards!r}")
    return int(shards)
