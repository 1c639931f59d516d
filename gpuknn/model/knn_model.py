"""The fitted k-NN model: prepare queries, search, vote or average.

A :class:`KNNModel` is what :meth:`gpuknn.KNN.fit` produces and what a model
file holds. Queries go through the same preparation as the training sample
(reduction, then L2 normalisation for COSINE, then zero padding for IVFPQ), are
searched, and the neighbours' labels are turned into predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn import devices as device_choice
from gpuknn.errors import ClientError, DataError
from gpuknn.hyperparameters import Hyperparameters
from gpuknn.metrics import MISSING_INDEX
from gpuknn.model import files as model_files
from gpuknn.model import predict
from gpuknn.model.answer import Answer
from gpuknn.model.parts import ModelParts, Preparation, check_k
from gpuknn.search.placement import for_index
from gpuknn.search.shards import on_device, shard_index

ArrayLike = Any  # numpy.ndarray or cupy.ndarray


# Queries per pass of KNNModel.answer (bounds its working memory, not its result).
ANSWER_CHUNK_ROWS = 8192


class KNNModel:
    """A trained k-NN model; load one with :meth:`load`, or get one from ``KNN.fit``.

    Parameters
    ----------
    hyperparameters : Hyperparameters
        As trained; ``k`` and ``predictor_type`` may be changed afterwards.
    preparation : Preparation
    index : ExactSearch or IVFSearch
        Holds the prepared vectors of the sample.
    labels : ndarray of shape (n_indexed,), float32, or None
        Label of every indexed vector (None for an unlabelled index).
    ids : ndarray of shape (n_indexed,), int64
        Row number, in the training data as read, of every indexed vector.
    device : {"cpu", "gpu"}
        Where preparation, exact search and voting run.
    rows_seen : int
        Rows read during training.
    """

    def __init__(self, hyperparameters: Hyperparameters, preparation: Preparation, index: Any,
                 labels: np.ndarray | None, ids: np.ndarray, *, device: str = "cpu",
                 rows_seen: int | None = None):
        self.hyperparameters = hyperparameters
        self.preparation = preparation
        self.index = index
        self.labels = labels
        self.ids = np.asarray(ids, dtype=np.int64)
        self.device = device
        self.xp = _backend.array_module(device)
        self.rows_seen = int(rows_seen if rows_seen is not None else len(self.ids))
        self.classes_ = None if labels is None else np.unique(labels)
        self._device_arrays: dict[str, Any] = {}

    # -- editable settings -------------------------------------------------------------
    @property
    def k(self) -> int:
        """Neighbours used by :meth:`predict` (editable, at most the indexed rows)."""
        return self.hyperparameters.k

    @k.setter
    def k(self, value: int) -> None:
        self.hyperparameters = self.hyperparameters.replace(k=value)
        check_k(self.k, self.n_indexed)

    @property
    def predictor_type(self) -> str:
        """``"classifier"`` or ``"regressor"`` (editable)."""
        return self.hyperparameters.predictor_type

    @predictor_type.setter
    def predictor_type(self, value: str) -> None:
        self.hyperparameters = self.hyperparameters.replace(predictor_type=value)

    @property
    def n_indexed(self) -> int:
        """Rows in the index (the sample size actually kept)."""
        return int(self.index.ntotal)

    @property
    def feature_dim(self) -> int:
        """Features expected in every query row."""
        return self.preparation.feature_dim

    # -- queries -----------------------------------------------------------------------
    def kneighbors(self, X: ArrayLike, k: int | None = None) -> tuple[ArrayLike, ArrayLike]:
        """Distances and training-row ids of the nearest neighbours.

        Parameters
        ----------
        X : array of shape (n_queries, feature_dim)
            numpy or cupy; results come back in the same array module.
        k : int, optional
            Defaults to the model's ``k``.

        Returns
        -------
        distances : array of shape (n_queries, k), float32
            Euclidean distance for L2, inner product or cosine similarity
            otherwise; nearest first.
        indices : array of shape (n_queries, k), int64
            Row numbers of the neighbours in the training data as it was read.
        """
        k = self.k if k is None else check_k(k, self.n_indexed)
        distances, positions = self._search(X, k)
        return self._out(X, distances), self._out(X, self._ids_of(positions))

    def predict(self, X: ArrayLike) -> ArrayLike:
        """Predicted label of every query: majority vote (classifier) or mean (regressor).

        Parameters
        ----------
        X : array of shape (n_queries, feature_dim)

        Returns
        -------
        array of shape (n_queries,), float32
            Vote ties go to the smallest label.
        """
        _, positions = self._search(X, self.k)
        return self._out(X, self._predicted(positions))

    def predict_proba(self, X: ArrayLike) -> ArrayLike:
        """Vote shares of every class among the k neighbours (classifiers).

        Returns
        -------
        array of shape (n_queries, n_classes), float32
            Columns follow ``classes_`` (sorted labels).
        """
        if self.predictor_type != "classifier":
            raise ClientError("predict_proba needs predictor_type='classifier'")
        _, positions = self._search(X, self.k)
        return self._out(X, predict.vote_shares(self._vote(positions), xp=self.xp))

    def answer(self, X: ArrayLike) -> Answer:
        """Everything one search says about the queries: what the server's verbose mode returns.

        Queries are answered :data:`ANSWER_CHUNK_ROWS` at a time, so that the search's and
        the vote's working arrays stay the size of a chunk whatever the number of queries.

        Parameters
        ----------
        X : array of shape (n_queries, feature_dim)

        Returns
        -------
        Answer
            Host (numpy) arrays, whatever the device.
        """
        n_rows = len(X)
        first = self._answer(X[:ANSWER_CHUNK_ROWS])
        if n_rows <= ANSWER_CHUNK_ROWS:
            return first
        whole = first.allocate(n_rows)
        whole.fill(0, first)
        for start in range(ANSWER_CHUNK_ROWS, n_rows, ANSWER_CHUNK_ROWS):
            whole.fill(start, self._answer(X[start:start + ANSWER_CHUNK_ROWS]))
        return whole

    def prepare(self) -> None:
        """Make now the arrays that the first answer would make: the ids and labels on the
        model's device, and the vote's label classes. A multi-model server does this at
        load, so that what the model holds can be measured before it answers."""
        self._on_device("ids", lambda: self.ids)
        if self.labels is not None:
            self._on_device("labels", self._require_labels)
            self._on_device("classes", lambda: self.classes_)
            self._on_device("label_classes", self._label_classes)

    def warm_up_query(self) -> np.ndarray:
        """One query row that is cheap to answer, for a server's warm-up search.

        Where queries and index vectors share their first ``feature_dim`` coordinates
        (no reduction), it is a vector of the index (a pruned search then scans little);
        otherwise zeros, which may scan much more.

        Returns
        -------
        ndarray of shape (1, feature_dim), float32
        """
        row = np.zeros((1, self.feature_dim), dtype=np.float32)
        if self.preparation.reduction is None and self.n_indexed:
            row[0] = self.index.example_vector()[:self.feature_dim]
        return row

    def _answer(self, X: ArrayLike) -> Answer:
        distances, positions = self._search(X, self.k)
        host = _backend.to_host
        labelled = self.labels is not None
        classifier = labelled and self.predictor_type == "classifier"
        return Answer(
            predicted_label=host(self._predicted(positions)) if labelled else None,
            distances=host(distances),
            ids=host(self._ids_of(positions)),
            labels=host(self._neighbour_labels(positions)) if labelled else None,
            probabilities=(host(predict.vote_shares(self._vote(positions), xp=self.xp))
                           if classifier else None),
        )

    def _ids_of(self, positions: ArrayLike) -> ArrayLike:
        xp = self.xp
        ids = self._on_device("ids", lambda: self.ids)
        found = positions != MISSING_INDEX
        return xp.where(found, ids[xp.where(found, positions, 0)], MISSING_INDEX)

    def _neighbour_labels(self, positions: ArrayLike) -> ArrayLike:
        """Label of every neighbour, NaN where a neighbour is missing."""
        xp = self.xp
        labels = self._on_device("labels", self._require_labels)
        found = positions != MISSING_INDEX
        return xp.where(found, labels[xp.where(found, positions, 0)], xp.float32(xp.nan))

    def _predicted(self, positions: ArrayLike) -> ArrayLike:
        xp = self.xp
        if self.predictor_type == "regressor":
            labels = self._on_device("labels", self._require_labels)
            found = positions != MISSING_INDEX
            return predict.mean_labels(labels[xp.where(found, positions, 0)], found, xp=xp)
        classes = self._on_device("classes", lambda: self.classes_)
        return classes[predict.majority(self._vote(positions), xp=xp)]

    def _vote(self, positions: ArrayLike) -> ArrayLike:
        xp = self.xp
        label_classes = self._on_device("label_classes", self._label_classes)
        found = label_classes[xp.where(positions >= 0, positions, 0)].astype(xp.int64)
        neighbour_classes = xp.where(positions != MISSING_INDEX, found, -1)
        return predict.vote_counts(neighbour_classes, len(self.classes_), xp=xp)

    def _label_classes(self) -> np.ndarray:
        """Every indexed row's class (its label's place in ``classes_``), in the smallest
        integer type that holds them: the model keeps this array, a row's 2 bytes where
        8 would double a small model's own memory."""
        dtype = np.int16 if len(self.classes_) <= np.iinfo(np.int16).max else np.int32
        return np.searchsorted(self.classes_, self._require_labels()).astype(dtype)

    def _search(self, X: ArrayLike, k: int) -> tuple[ArrayLike, ArrayLike]:
        xp = self.xp
        queries = self.preparation.apply(self._check_queries(X), xp=xp)
        if getattr(self.index, "xp", None) is xp:
            return self.index.search(queries, k)
        distances, positions = self.index.search(_backend.to_host(queries), k)
        return xp.asarray(distances), xp.asarray(positions)

    def _check_queries(self, X: ArrayLike) -> ArrayLike:
        xp = self.xp
        if _backend.get_xp(X) is np:
            X = np.asarray(X)
            if X.dtype.kind not in "fiub":
                raise DataError(f"queries must be numeric; got dtype {X.dtype}")
        X = _backend.to_device(X, xp, dtype=xp.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.feature_dim:
            raise DataError(f"queries must have shape (n, {self.feature_dim}); "
                            f"got {tuple(X.shape)}")
        bad = xp.nonzero(~xp.isfinite(X).all(axis=1))[0]
        if bad.size:
            rows = ", ".join(str(int(r)) for r in _backend.to_host(bad[:10]))
            raise DataError(f"query rows with NaN or infinite values: {rows} (0-based)")
        return X

    def _require_labels(self) -> np.ndarray:
        if self.labels is None:
            raise ClientError("this model was trained without labels; only kneighbors works")
        return self.labels

    def _on_device(self, name: str, make: Callable[[], np.ndarray]) -> ArrayLike:
        """A host array, computed by ``make`` once and kept on the model's device."""
        if name not in self._device_arrays:
            self._device_arrays[name] = _backend.to_device(make(), self.xp)
        return self._device_arrays[name]

    @staticmethod
    def _out(like: ArrayLike, array: ArrayLike) -> ArrayLike:
        """Results live where the queries came from."""
        return _backend.to_host(array) if _backend.get_xp(like) is np else array

    # -- files -------------------------------------------------------------------------
    def parts(self) -> ModelParts:
        """What a model file holds: this model's parts (shared, not copied); a sharded
        model's is the index it was split from."""
        return ModelParts(self.hyperparameters, self.preparation,
                          getattr(self.index, "whole", self.index), self.labels,
                          self.ids, self.rows_seen, self.device)

    @property
    def n_shards(self) -> int:
        """Shards the index is split into (1 when it is whole)."""
        return len(getattr(self.index, "shards", [None]))

    def sharded(self, shards: int, *, devices: tuple[int, ...] = (),
                segment_rows: int = 0) -> KNNModel:
        """This model with its index split into ``shards``, searched concurrently (one
        thread each; on ``devices``, round robin, where GPUs are given) and merged: the
        answers are identical to the whole index's
        (:mod:`gpuknn.search.shards`). The vectors are shared where they can be (a
        view of an unpartitioned base, or of its file's map). With ``segment_rows``, an
        exact shard stays in host memory and is streamed through its device that many
        rows at a time (:mod:`gpuknn.search.streamed`)."""
        whole = getattr(self.index, "whole", self.index)
        if shards == 1 and not segment_rows and devices[:1] in ((), (_backend.current_gpu(),)):
            index = on_device(whole, devices[0]) if devices else whole  # no shard layer
        else:
            index = shard_index(whole, shards, devices=devices, segment_rows=segment_rows)
        device = "gpu" if devices else self.device
        return KNNModel(self.hyperparameters, self.preparation, index, self.labels, self.ids,
                        device=device, rows_seen=self.rows_seen)

    @classmethod
    def from_parts(cls, parts: ModelParts) -> KNNModel:
        """The model of ``parts`` (as :func:`gpuknn.model.files.load` returns them)."""
        return cls(parts.hyperparameters, parts.preparation, parts.index, parts.labels,
                   parts.ids, device=parts.device, rows_seen=parts.rows_seen)

    def save(self, path: str | Path) -> Path:
        """Write the model to a directory, or to a ``.tar.gz`` / ``.tgz`` archive.

        The write is atomic: a crash never leaves a half-written model behind.
        See :mod:`gpuknn.model.layout` for the files.
        """
        return model_files.save(self.parts(), path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", *,
             cache_dir: str | Path | None = None, shards: int | None = None,
             devices: str | tuple[int, ...] | None = None) -> KNNModel:
        """Read a model written by :meth:`save` (a directory or a ``.tar.gz``).

        A ``faiss.Flat`` or IVF index in a directory is memory-mapped, so processes that
        load one model share its pages. A ``.tar.gz`` is unpacked once, into
        ``cache_dir`` (default ``$GPUKNN_MODEL_CACHE``, else ``.gpuknn-models/`` beside
        it), and mapped from there (:func:`gpuknn.model.archives.unpacked`).

        ``shards`` splits the index (:meth:`sharded`). On a GPU, ``devices`` (default:
        every visible GPU, see :mod:`gpuknn.devices`) are where the shards go; without
        ``shards``, a model that does not fit one of them is split into as few shards
        as fit (:mod:`gpuknn.search.placement`), and the choice is logged.
        """
        if shards is not None and (isinstance(shards, bool) or int(shards) < 1):
            raise ClientError(f"shards must be a positive integer; got {shards!r}")
        device = _backend.resolve_device(device)
        ordinals = device_choice.resolve(devices, device)
        model = cls.from_parts(model_files.load(path, device="cpu", cache_dir=cache_dir))
        if device == "cpu":
            return model if shards is None or shards == 1 else model.sharded(int(shards))
        device_choice.log_choice(ordinals)
        segment_rows = 0
        if shards is None:  # whole on the first GPU, the fewest shards that fit, or streamed
            chosen = for_index(model.index, ordinals)
            shards, segment_rows = chosen.shards, chosen.segment_rows
        return model.sharded(int(shards), devices=ordinals, segment_rows=segment_rows)

    def __repr__(self) -> str:
        hp = self.hyperparameters
        return (f"KNNModel(k={hp.k}, predictor_type={hp.predictor_type!r}, "
                f"index_type={hp.index_type!r}, index_metric={hp.index_metric!r}, "
                f"n_indexed={self.n_indexed}, feature_dim={self.feature_dim}, "
                f"device={self.device!r})")
