"""gpuknn's scikit-learn estimators in scikit-learn's own tools.

scikit-learn's ``check_estimator`` runs on both classes (every check passes: none is
declared an expected failure). Then, as a user would: ``clone``, ``Pipeline``,
``GridSearchCV`` (with worker processes, which pickle the estimators), ``cross_val_score``,
DataFrames with feature names, and pickling a fitted estimator, whose model travels as the
bytes of its model files. CI runs this file with the oldest scikit-learn gpuknn supports
too (``.ci/run``).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpuknn import KNN, KNeighborsClassifier, KNeighborsRegressor
from gpuknn.errors import HyperparameterError, ModelFileError

OLDEST_SUPPORTED = (1, 6)


def test_the_supported_scikit_learn():
    version = tuple(int(part) for part in sklearn.__version__.split(".")[:2])
    assert version >= OLDEST_SUPPORTED, sklearn.__version__


@parametrize_with_checks([KNeighborsClassifier(device="cpu"),
                          KNeighborsRegressor(device="cpu")])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def letter_part(letter):
    """4,000 training rows and 1,000 test rows of the letter set (26 classes)."""
    X, y, X_test, y_test = letter
    return X[:4000], y[:4000], X_test[:1000], y_test[:1000]


# -- the same answers as KNN --------------------------------------------------------------------
@pytest.mark.parametrize("settings", [
    {"k": 5},
    {"k": 10, "sample_size": 2500, "seed": 7},
    {"k": 7, "index_type": "faiss.IVFPQ", "faiss_index_pq_m": 4, "sample_size": 3000},
    {"k": 3, "dimension_reduction_type": "sign", "dimension_reduction_target": 8},
], ids=["flat", "sampled", "ivfpq", "sign"])
def test_predictions_equal_knn(letter_part, settings):
    X, y, Q, _ = letter_part
    clf = KNeighborsClassifier(device="cpu", **settings).fit(X, y)
    knn = KNN(device="cpu", predictor_type="classifier",
              **{"sample_size": len(X), **settings}).fit(X, y)
    np.testing.assert_array_equal(clf.predict(Q), knn.predict(Q))
    np.testing.assert_array_equal(clf.predict_proba(Q), knn.predict_proba(Q))
    np.testing.assert_array_equal(clf.kneighbors(Q)[1], knn.kneighbors(Q)[1])
    reg = KNeighborsRegressor(device="cpu", **settings).fit(X, y)
    knn_reg = KNN(device="cpu", predictor_type="regressor",
                  **{"sample_size": len(X), **settings}).fit(X, y)
    np.testing.assert_array_equal(reg.predict(Q), knn_reg.predict(Q))


def test_any_labels_and_a_class_missing_from_the_sample():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = np.array(["common"] * 150 + ["other"] * 150, dtype=object)
    clf = KNeighborsClassifier(k=3, sample_size=200, seed=3, device="cpu")
    sampled = set(clf.fit(X, y).model_.ids.tolist())  # a row's draw depends on the seed only
    rare = min(set(range(len(X))) - sampled)
    y[rare] = "rare"  # the one row of its class, outside the sample
    clf.fit(X, y)
    assert list(clf.classes_) == ["common", "other", "rare"]
    assert set(clf.model_.ids.tolist()) == sampled
    proba = clf.predict_proba(X[:20])
    assert proba.shape == (20, 3) and np.all(proba[:, 2] == 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-6)
    assert set(clf.predict(X)) <= {"common", "other"}


def test_hyperparameters_are_checked_in_fit_not_init(letter_part):
    X, y, _, _ = letter_part
    bad = KNeighborsClassifier(k=0, index_type="faiss.HNSW", device="cpu")
    assert bad.get_params()["k"] == 0  # stored as given
    with pytest.raises(HyperparameterError) as raised:
        bad.fit(X, y)
    assert "'k'" in str(raised.value) and "'index_type'" in str(raised.value)


# -- scikit-learn's tools -----------------------------------------------------------------------
def test_clone_and_repr():
    clf = KNeighborsClassifier(k=7, index_type="faiss.IVFFlat", device="cpu")
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    assert repr(clf) == "KNeighborsClassifier(device='cpu', index_type='faiss.IVFFlat', k=7)"
    knn = KNN(k="10", sample_size="2000", predictor_type="classifier", device="cpu")
    assert clone(knn).get_params() == knn.get_params()
    assert knn.set_params(k=3).hyperparameters.k == 3


def test_pipeline_cross_validation_and_grid_search(letter_part):
    X, y, Q, y_q = letter_part
    pipeline = make_pipeline(StandardScaler(), KNeighborsClassifier(k=5, device="cpu"))
    scores = cross_val_score(pipeline, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.6  # exact 5-NN on 2,667 letter rows
    assert pipeline.fit(X, y).score(Q, y_q) > 0.7
    grid = {"k": [1, 5], "index_type": ["faiss.Flat", "faiss.IVFFlat"]}
    search = GridSearchCV(KNeighborsClassifier(device="cpu"), grid, cv=2, n_jobs=2)
    search.fit(X, y)  # two worker processes: each estimator is pickled there and back
    assert len(search.cv_results_["params"]) == 4
    assert search.best_params_["k"] == 1  # 1-NN is the best k on letter (0.9565 on all of it)
    assert search.score(Q, y_q) > 0.8


def test_regressor_scores_r2(letter_part):
    X, _, Q, _ = letter_part
    target = X[:, 0] * 2.0 + X[:, 1]
    reg = KNeighborsRegressor(k=5, device="cpu").fit(X, target)
    assert reg.score(Q, Q[:, 0] * 2.0 + Q[:, 1]) > 0.7


def test_dataframes_keep_feature_names(letter_part):
    X, y, Q, _ = letter_part
    columns = [f"f{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=columns)
    clf = KNeighborsClassifier(device="cpu").fit(frame, y)
    assert list(clf.feature_names_in_) == columns and clf.n_features_in_ == 16
    expected = clf.predict(pd.DataFrame(Q, columns=columns))
    with pytest.warns(UserWarning, match="fitted with feature names"):
        np.testing.assert_array_equal(clf.predict(Q), expected)
    with pytest.raises(ValueError, match="feature names should match"):
        clf.predict(pd.DataFrame(Q, columns=columns[::-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KNeighborsClassifier(device="cpu").fit(X, y).predict(Q)  # arrays: no warning


def test_a_fitted_estimator_pickles_its_model_as_file_bytes(letter_part):
    X, y, Q, _ = letter_part
    clf = KNeighborsClassifier(k=5, index_type="faiss.IVFFlat", device="cpu").fit(X, y)
    payload = pickle.dumps(clf)
    globals_used = _pickled_globals(payload)
    assert not any(name.startswith(("gpuknn.model", "gpuknn.search", "faiss"))
                   for name in globals_used), globals_used
    back = pickle.loads(payload)
    np.testing.assert_array_equal(back.predict(Q), clf.predict(Q))
    assert back.get_params() == clf.get_params() and hasattr(clf, "model_")


def test_a_tampered_pickled_model_is_refused(letter_part):
    X, y, _, _ = letter_part
    state = KNeighborsClassifier(k=3, device="cpu").fit(X, y).__getstate__()
    labels = bytearray(state["model_files_"]["model_algo-1.labels"])
    labels[0] ^= 1
    state["model_files_"]["model_algo-1.labels"] = bytes(labels)
    fresh = KNeighborsClassifier.__new__(KNeighborsClassifier)
    with pytest.raises(ModelFileError, match=r"<pickled estimator>/model_algo-1\.labels: "
                                             "checksum mismatch"):
        fresh.__setstate__(state)


def _pickled_globals(payload: bytes) -> set[str]:
    """The classes and functions a pickle names (its GLOBAL and STACK_GLOBAL opcodes)."""
    names, strings = set(), []
    for opcode, argument, _ in pickletools.genops(io.BytesIO(payload)):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(argument)
        elif opcode.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif opcode.name == "GLOBAL":
            names.add(argument.replace(" ", "."))
    return names


# -- scikit-learn stays optional ---------------------------------------------------------------
def test_import_gpuknn_does_not_import_scikit_learn():
    code = "import sys, gpuknn; gpuknn.KNN; print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_without_scikit_learn_the_estimators_say_which_extra():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "from gpuknn import KNeighborsClassifier")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode != 0 and "gpuknn[sklearn]" in done.stderr
