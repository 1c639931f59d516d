"""gpuknn as scikit-learn estimators: :class:`KNeighborsClassifier` and
:class:`KNeighborsRegressor`.

They keep scikit-learn's estimator contract, so that ``clone``, ``Pipeline``,
``GridSearchCV``, ``cross_val_score`` and ``check_estimator`` work: every SageMaker
hyperparameter (and ``device``) is a keyword argument of ``__init__``, stored as given and
validated in :meth:`fit`; fitted attributes end in ``_``; inputs are checked by
scikit-learn's ``validate_data`` (``n_features_in_``, ``feature_names_in_``). Training and
prediction are :class:`gpuknn.KNN`'s, so for the same hyperparameters and seed the
predictions are the same.

The classifier takes any labels scikit-learn does (strings too): they are encoded as
their index in the sorted ``classes_``, which is what the model votes on, so vote ties
still go to the smallest label. A pickled estimator carries its model as the bytes of its
model files (:func:`gpuknn.model.files.to_bytes`), never as pickled objects.

Needs scikit-learn 1.6 or newer (the ``sklearn`` extra); ``import gpuknn`` does not import
it, ``from gpuknn import KNeighborsClassifier`` does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuknn.errors import DataError, DependencyError

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as err:  # validate_data is new in scikit-learn 1.6
    raise DependencyError("gpuknn's scikit-learn estimators need scikit-learn 1.6 or newer: "
                          "pip install 'gpuknn[sklearn]'") from err

from gpuknn.estimator import KNN
from gpuknn.model import files as model_files
from gpuknn.model.knn_model import KNNModel

_FLOATS = (np.float32, np.float64)
_STATE_KEY = "model_files_"


class _KNeighbors(BaseEstimator):
    """What both estimators share: the parameters, fitting, searching and pickling.

    Parameters
    ----------
    k : int
        Neighbours that vote or are averaged (SageMaker's ``k``).
    sample_size : int, optional
        Rows kept by uniform reservoir sampling; None keeps every row of ``X``.
    feature_dim, dimension_reduction_type, dimension_reduction_target, index_type,
    index_metric, faiss_index_ivf_nlists, faiss_index_pq_m, faiss_index_nprobe,
    mini_batch_size, epochs, seed
        SageMaker's hyperparameters of the same names (see the README's table).
    device : {"auto", "cpu", "gpu"}
        Where to compute; inputs and outputs stay numpy arrays.
    """

    _predictor_type = ""

    def __init__(self, k: int = 5, *, sample_size: int | None = None,
                 feature_dim: int | str = "auto", dimension_reduction_type: str | None = None,
                 dimension_reduction_target: int | None = None,
                 index_type: str = "faiss.Flat", index_metric: str = "L2",
                 faiss_index_ivf_nlists: int | str = "auto", faiss_index_pq_m: int | None = None,
                 faiss_index_nprobe: int = 5, mini_batch_size: int = 5000, epochs: int = 1,
                 seed: int = 0, device: str = "auto"):
        self.k = k
        self.sample_size = sample_size
        self.feature_dim = feature_dim
        self.dimension_reduction_type = dimension_reduction_type
        self.dimension_reduction_target = dimension_reduction_target
        self.index_type = index_type
        self.index_metric = index_metric
        self.faiss_index_ivf_nlists = faiss_index_ivf_nlists
        self.faiss_index_pq_m = faiss_index_pq_m
        self.faiss_index_nprobe = faiss_index_nprobe
        self.mini_batch_size = mini_batch_size
        self.epochs = epochs
        self.seed = seed
        self.device = device

    # -- fitting ---------------------------------------------------------------------------
    def sagemaker_hyperparameters(self, n_rows: int) -> dict[str, Any]:
        """The SageMaker hyperparameters these parameters make, for ``n_rows`` rows of
        training data (``sample_size`` None keeps them all). ``KNN(**them)`` trains alike."""
        params = self.get_params(deep=False)
        params.pop("device")
        if params["sample_size"] is None:
            params["sample_size"] = max(int(n_rows), 1)
        chosen = {name: value for name, value in params.items() if value is not None}
        return {**chosen, "predictor_type": self._predictor_type}

    def _fit_model(self, X: np.ndarray, y: np.ndarray) -> None:
        if len(X) < self.k:
            raise DataError(f"k={self.k} neighbours need at least {self.k} training rows; "
                            f"got {len(X)} sample{'s' if len(X) != 1 else ''}")
        knn = KNN(device=self.device, **self.sagemaker_hyperparameters(len(X)))
        self.model_: KNNModel = knn.fit(X, y).model

    @property
    def device_(self) -> str:
        """The device the fitted model computes on, "cpu" or "gpu"."""
        check_is_fitted(self)
        return self.model_.device

    # -- searching -------------------------------------------------------------------------
    def _queries(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=_FLOATS)

    def kneighbors(self, X: Any, n_neighbors: int | None = None,
                   return_distance: bool = True) -> Any:
        """The nearest training rows of each query.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        n_neighbors : int, optional
            Defaults to ``k``.
        return_distance : bool
            Also return the distances (first).

        Returns
        -------
        distances : ndarray of shape (n_queries, n_neighbors), float32
            Euclidean distance for L2; inner product or cosine similarity otherwise
            (larger is nearer); nearest first.
        indices : ndarray of shape (n_queries, n_neighbors), int64
            Row numbers of the neighbours in the training data ``X`` given to :meth:`fit`.
        """
        queries = self._queries(X)
        distances, indices = self.model_.kneighbors(queries, n_neighbors)
        return (distances, indices) if return_distance else indices

    # -- pickling ---------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: it may be the live __dict__
        model = state.pop("model_", None)
        if model is not None:
            state[_STATE_KEY] = model_files.to_bytes(model.parts())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        files = state.pop(_STATE_KEY, None)
        super().__setstate__(state)
        if files is not None:
            parts = model_files.from_bytes(files, self.device, origin="<pickled estimator>")
            self.model_ = KNNModel.from_parts(parts)


class KNeighborsClassifier(ClassifierMixin, _KNeighbors):
    """k-nearest-neighbour classifier: SageMaker k-NN's majority vote, as a scikit-learn
    estimator.

    Parameters
    ----------
    k : int, default 5
        Neighbours that vote.
    sample_size : int, optional
        Rows kept by reservoir sampling (default: every row).
    **
        Every other SageMaker hyperparameter by name, and ``device``; see
        :class:`gpuknn.neighbors._KNeighbors`.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels, sorted; the columns of :meth:`predict_proba`.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        When fitted on a DataFrame with string column names.
    model_ : KNNModel

    Examples
    --------
    >>> import numpy as np
    >>> from gpuknn import KNeighborsClassifier
    >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> clf = KNeighborsClassifier(k=1, device="cpu").fit(X, ["a", "a", "b", "b"])
    >>> clf.predict([[4.9, 5.2]])
    array(['b'], dtype='<U1')
    """

    _predictor_type = "classifier"

    def fit(self, X: Any, y: Any) -> KNeighborsClassifier:
        """Sample the rows, reduce them and build the index.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
        y : array-like of shape (n_rows,)
            Class labels of any kind scikit-learn accepts.
        """
        X, y = validate_data(self, X, y, dtype=_FLOATS)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        self._fit_model(X, encoded.astype(np.float32))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The majority label of each query's neighbours (ties: the smallest label).

        Returns
        -------
        ndarray of shape (n_queries,), of the labels' type
        """
        queries = self._queries(X)
        return self.classes_[self.model_.predict(queries).astype(np.intp)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Each class's share of the neighbours' votes.

        Returns
        -------
        ndarray of shape (n_queries, n_classes), float32
            Columns follow ``classes_``; a class absent from the sample has 0.
        """
        queries = self._queries(X)
        shares = self.model_.predict_proba(queries)
        full = np.zeros((len(shares), len(self.classes_)), dtype=shares.dtype)
        full[:, self.model_.classes_.astype(np.intp)] = shares
        return full


class KNeighborsRegressor(RegressorMixin, _KNeighbors):
    """k-nearest-neighbour regressor: SageMaker k-NN's mean of the neighbours' labels, as a
    scikit-learn estimator.

    Parameters
    ----------
    k : int, default 5
        Neighbours averaged.
    sample_size : int, optional
        Rows kept by reservoir sampling (default: every row).
    **
        Every other SageMaker hyperparameter by name, and ``device``; see
        :class:`gpuknn.neighbors._KNeighbors`.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        When fitted on a DataFrame with string column names.
    model_ : KNNModel
    """

    _predictor_type = "regressor"

    def fit(self, X: Any, y: Any) -> KNeighborsRegressor:
        """Sample the rows, reduce them and build the index.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
        y : array-like of shape (n_rows,), numeric
        """
        X, y = validate_data(self, X, y, dtype=_FLOATS, y_numeric=True)
        self._fit_model(X, np.asarray(y, dtype=np.float32))
        return self

    def predict(self, X: Any) -> np.ndarray:
        """The mean label of each query's neighbours.

        Returns
        -------
        ndarray of shape (n_queries,), float32
        """
        queries = self._queries(X)
        return self.model_.predict(queries)
