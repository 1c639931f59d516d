"""The last steps of training: from a sample to a model.

:func:`build_model` plans the preparation (:func:`plan_preparation`: the ``feature_dim``
check, the PQ sub-vector default, the reduction target's rounding, zero padding), prepares
the sample on the device and builds the index (:func:`build_index`: exact search for
``faiss.Flat``, faiss's IVF otherwise). Used by ``KNN.fit``, ``gpuknn train`` and the Ray
leader.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from gpuknn import _backend
from gpuknn.errors import DataError, HyperparameterError
from gpuknn.hyperparameters import Hyperparameters, auto_nlists, default_pq_m
from gpuknn.model.knn_model import KNNModel
from gpuknn.model.parts import Preparation, check_k
from gpuknn.model.reduction import fit_reduction
from gpuknn.search.exact import ExactSearch
from gpuknn.search.faiss_index import IVFSearch

logger = logging.getLogger("gpuknn")


def build_model(features: np.ndarray, labels: np.ndarray | None, ids: np.ndarray,
                hp: Hyperparameters, *, device: str = "cpu", rows_seen: int | None = None,
                ) -> KNNModel:
    """Reduce and index a sample; the last two steps of training.

    Parameters
    ----------
    features : ndarray of shape (n_sample, n_features), float32
        Given up to the model, so that the sample is never held twice: a ``faiss.Flat``
        index holds it as its base (reordered in place when it is partitioned); where the
        preparation makes new vectors (a reduction, COSINE normalisation, IVFPQ padding,
        a copy on the GPU), its memory is handed back once they are made, and an IVF
        index hands back the vectors' memory as it copies them. It reads as zeros then.
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
    _discard_if_copied(features, vectors)
    index = build_index(vectors, hp, preparation, xp=xp)
    logger.info("built %s (%s) over %d x %d vectors on %s in %.2f s", hp.index_type,
                hp.index_metric, vectors.shape[0], vectors.shape[1],
                _backend.device_name(xp), time.perf_counter() - started)
    model = KNNModel(hp, preparation, index, labels, ids, device=device, rows_seen=rows_seen)
    _backend.release_free_memory()  # the build's temporaries, back to the system
    return model


def _discard_if_copied(features: np.ndarray, vectors: Any) -> None:
    """Hand back the raw sample's memory once the prepared vectors are a copy of it."""
    if _backend.get_xp(vectors) is not np or not np.may_share_memory(features, vectors):
        _backend.discard_rows(features, len(features))


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
                           device="cpu" if xp is np else "gpu", give_up=True)
