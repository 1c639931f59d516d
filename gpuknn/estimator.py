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
from gpuknn.errors import DataError, HyperparameterError, NotFittedError
from gpuknn.exact import ExactSearch
from gpuknn.faiss_index import IVFSearch
from gpuknn.hyperparameters import Hyperparameters, auto_nlists, default_pq_m, parse
from gpuknn.io.text import label_column_hint
from gpuknn.model import KNNModel, Preparation, check_k
from gpuknn.reduction import fit_reduction
from gpuknn.sampling import ReservoirSampler

logger = logging.getLogger("gpuknn")
Batch = tuple[Any, Any]


class KNN:
    """k-nearest-neighbour classifier or regressor with SageMaker's hyperparameters.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}
        Where to compute; "auto" picks the GPU when CuPy sees one.
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

    def __init__(self, *, device: str = "auto", **hyperparameters: Any):
        self.device = device
        self.hyperparameters: Hyperparameters = parse(hyperparameters)
        self.model: KNNModel | None = None

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters and device, as given defaults filled in."""
        return {"device": self.device, **self.hyperparameters.to_dict()}

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
            sampler.add(densify(features, hp) if sp.issparse(features) else features, labels)
        features, labels, ids = sampler.result(take=True)
        if labels is None and _is_source(X):
            raise DataError(f"{io.sources.name_of(X)}: the training data has no labels "
                            "(label[\"values\"] in RecordIO records, the first column of CSV "
                            "with label_size=1); k-NN predicts from the neighbours' labels")
        logger.info("sampled %d of %d rows in %.2f s", len(ids), sampler.rows_seen,
                    time.perf_counter() - started)
        self.model = build_model(features, labels, ids, hp, device=device,
                                 rows_seen=sampler.rows_seen)
        return self

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
        self.model = build_model(merged.features, merged.labels, merged.ids, hp,
                                 device=device, rows_seen=merged.rows_seen)
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


def densify(features: sp.spmatrix, hp: Hyperparameters) -> np.ndarray:
    """A sparse batch as a dense array, refused before allocating when it cannot fit.

    Raises
    ------
    HyperparameterError
        When its width disagrees with ``feature_dim``.
    DataError
        When the dense batch would need more memory than is available.
    """
    rows, width = features.shape
    if hp.feature_dim not in ("auto", width):
        raise HyperparameterError([f"'feature_dim' is {hp.feature_dim} but the sparse data's "
                                   f"shape is [{width}]"])
    needed = rows * width * 4
    available = _backend.available_memory()
    if available is not None and needed > available // 2:
        raise DataError(f"sparse rows of shape [{width}] densify to {needed / 2**30:.1f} GiB "
                        f"per batch of {rows} rows, more than half the "
                        f"{available / 2**30:.1f} GiB available; check the records' shape, "
                        "or lower mini_batch_size")
    return features.toarray()


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


def build_model(features: np.ndarray, labels: np.ndarray | None, ids: np.ndarray,
                hp: Hyperparameters, *, device: str = "cpu", rows_seen: int | None = None,
                ) -> KNNModel:
    """Reduce and index a sample; the last two steps of training.

    Parameters
    ----------
    features : ndarray of shape (n_sample, n_features), float32
        Given up to the model: a ``faiss.Flat`` index holds it as its base (reordered in
        place when it is partitioned), so the sample is never held twice.
    labels : ndarray of shape (n_sample,), float32, or None
    ids : ndarray of shape (n_sample,), int64
        Row numbers of the sample in the training data.
    hp : Hyperparameters
    device : {"cpu", "gpu"}

    Returns
    -------
    KNNModel
    """
    _check_enough_rows(hp.k, features.shape[0], rows_seen)
    preparation = plan_preparation(hp, features.shape[1])
    check_k(hp.k, features.shape[0])
    xp = _backend.array_module(device)
    started = time.perf_counter()
    vectors = preparation.apply(_backend.to_device(features, xp), xp=xp)
    index = build_index(vectors, hp, preparation, xp=xp)
    logger.info("built %s (%s) over %d x %d vectors on %s in %.2f s", hp.index_type,
                hp.index_metric, vectors.shape[0], vectors.shape[1],
                _backend.device_name(xp), time.perf_counter() - started)
    model = KNNModel(hp, preparation, index, labels, ids, device=device, rows_seen=rows_seen)
    _backend.release_free_memory()  # the build's temporaries, back to the system
    return model


def _check_enough_rows(k: int, n_sample: int, rows_seen: int | None) -> None:
    """Refuse training data of fewer rows than ``k``, saying how many it has.

    (``k`` above ``sample_size`` is refused earlier, by the hyperparameters' rules.)
    """
    rows = n_sample if rows_seen is None else rows_seen
    if k > n_sample and rows <= n_sample:
        raise DataError(f"k={k} but the training data has only {rows} "
                        f"row{'s' if rows != 1 else ''}: every query needs k neighbours; "
                        f"lower k to at most {rows}, or train on more rows")


def plan_preparation(hp: Hyperparameters, n_features: int) -> Preparation:
    """Decide the reduction, normalisation and padding for data of ``n_features``."""
    if hp.feature_dim not in ("auto", n_features):
        raise HyperparameterError([f"'feature_dim' is {hp.feature_dim} but the data has "
                                   f"{n_features} features"])
    target = hp.dimension_reduction_target
    pq_m = hp.faiss_index_pq_m
    if hp.index_type == "faiss.IVFPQ" and pq_m is None:
        pq_m = default_pq_m(target or n_features)
    if target is not None and pq_m is not None and target % pq_m:
        target += pq_m - target % pq_m  # SageMaker raises the target to a multiple of pq_m
        logger.info("dimension_reduction_target raised to %d, a multiple of pq_m=%d",
                    target, pq_m)
    if target is not None and target >= n_features:
        raise HyperparameterError([f"'dimension_reduction_target' ({target}, after rounding "
                                   f"up to a multiple of pq_m) must be smaller than the "
                                   f"{n_features} features of the data"])
    reduction = (fit_reduction(hp.dimension_reduction_type, n_features, target, hp.seed)
                 if target is not None else None)
    reduced_dim = target or n_features
    index_dim = reduced_dim
    if pq_m is not None and reduced_dim % pq_m:
        index_dim = reduced_dim + pq_m - reduced_dim % pq_m  # zero padding
    return Preparation(n_features, reduction, hp.index_metric == "COSINE", index_dim, pq_m)


def build_index(vectors: Any, hp: Hyperparameters, preparation: Preparation, *,
                xp: Any = np) -> Any:
    """Build the search structure named by ``index_type`` over prepared vectors."""
    if hp.index_type == "faiss.Flat":  # training gives the sample up: reordered in place
        return ExactSearch(vectors, hp.index_metric, xp=xp, in_place=True)
    host = _backend.to_host(vectors)
    nlists = hp.faiss_index_ivf_nlists
    nlists = auto_nlists(host.shape[0]) if nlists == "auto" else nlists
    return IVFSearch.build(host, index_type=hp.index_type, metric=hp.index_metric,
                           nlists=nlists, pq_m=preparation.pq_m,
                           nprobe=hp.faiss_index_nprobe, seed=hp.seed,
                           device="cpu" if xp is np else "gpu")
