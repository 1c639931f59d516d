"""gpuknn's exact search and prediction on the CPU against faiss-cpu and scikit-learn, all
in this one process (behind ``bench/compare.py``; :mod:`~gpuknn.benchmark.cpu_compare_report`
writes its Markdown).

For every workload each engine is fitted, every operation is timed in interleaved rounds
(:func:`gpuknn.benchmark.timed.time_rounds`), and gpuknn's answers are checked against
faiss's on the rows without a tie at the k-th distance. Engines and operations:

gpuknn
    ``KNN(k, predictor_type="classifier", sample_size=N, index_type="faiss.Flat",
    device="cpu")``: ``kneighbors(Q)`` and ``predict(Q)``.
faiss
    ``faiss.IndexFlatL2.search(Q, k)``; its "predict" is the same search followed by a
    vectorised numpy majority vote (:func:`faiss_vote`, ties to the smallest label).
sklearn
    ``KNeighborsClassifier(algorithm="brute", n_neighbors=k)``: ``kneighbors`` and
    ``predict``.
numpy-gemm
    The GEMM floor: ``np.matmul(Q, X.T, out=buffer)`` into a preallocated float32 buffer,
    the inner products every exact L2 search must compute, without norms or top-k.

faiss and scikit-learn are imported only when a run starts (:func:`load_faiss`).
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpuknn._version import __version__
from gpuknn.benchmark import timed
from gpuknn.benchmark.machine import machine
from gpuknn.datasets import load_letter
from gpuknn.datasets.synthetic import gaussian_mixture

TIE_RTOL = 1e-5
ORDER_SEED = 7
STATISTIC = "best"  # the headline statistic: smallest wall time over the repetitions

# (engine, operation) of the peers gpuknn's (gpuknn, operation) is compared with.
PEERS = {
    "kneighbors": [("faiss", "kneighbors"), ("sklearn", "kneighbors")],
    "predict": [("faiss", "predict"), ("sklearn", "predict")],
}
LABELS = {
    ("gpuknn", "kneighbors"): "gpuknn KNN.kneighbors",
    ("gpuknn", "predict"): "gpuknn KNN.predict",
    ("faiss", "kneighbors"): "faiss IndexFlatL2.search",
    ("faiss", "predict"): "faiss search + numpy vote",
    ("sklearn", "kneighbors"): "sklearn brute kneighbors",
    ("sklearn", "predict"): "sklearn brute predict",
    ("numpy-gemm", "gemm"): "numpy GEMM floor (Q @ X.T)",
}


@functools.cache
def load_faiss() -> tuple[Any, bool]:
    """Run one scikit-learn OpenMP region, then import faiss (once per process).

    Measured: once faiss-cpu's bundled OpenBLAS (an OpenMP build) is loaded, every OpenMP
    region of scikit-learn's brute-force search runs on a single thread (half the speed
    on 2 cores) unless scikit-learn had already run one. Starting scikit-learn's OpenMP
    first lets both use every core, so the peers are measured at their best.

    Returns
    -------
    faiss : module
    in_order : bool
        Whether scikit-learn's OpenMP really started before faiss was first imported
        (False when something had imported faiss already).
    """
    from sklearn.neighbors import KNeighborsClassifier  # noqa: PLC0415

    in_order = "faiss" not in sys.modules
    rows = np.zeros((64, 2), dtype=np.float32)
    KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(rows, np.zeros(64)).kneighbors(rows)
    return importlib.import_module("faiss"), in_order


@dataclass
class Workload:
    """Base vectors and labels, queries and their labels, and k."""

    name: str
    description: str
    X: np.ndarray
    y: np.ndarray
    Q: np.ndarray
    y_q: np.ndarray
    k: int


def workloads(quick: bool) -> list[Workload]:
    """The synthetic 128-d mixture and UCI letter (k=10 and k=1); smaller with ``quick``."""
    n_base, n_queries = (20_000, 500) if quick else (100_000, 2_000)
    X, y, Q, y_q = gaussian_mixture(n_base, n_queries)
    synthetic = Workload(f"synthetic-{n_base // 1000}k-d128-k10",
                         f"Gaussian mixture, {n_base:,} x 128 base, {n_queries:,} queries, "
                         f"k=10, float32 (gaussian_mixture(), seed 20240601)",
                         X, y, Q, y_q, 10)
    X_l, y_l, Q_l, yq_l = load_letter()
    if quick:
        Q_l, yq_l = Q_l[:1000], yq_l[:1000]
    letter = [Workload(f"letter-k{k}", f"UCI letter, {X_l.shape[0]:,} train / {Q_l.shape[0]:,} "
                                       f"test, d=16, k={k}", X_l, y_l, Q_l, yq_l, k)
              for k in (10, 1)]
    return [synthetic, *letter]


def faiss_vote(indices: np.ndarray, label_classes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Majority label of every row of neighbour ``indices``; ties go to the smallest label.

    One ``bincount`` over ``row * n_classes + class`` gives the (rows, classes) vote table;
    ``argmax`` returns the first (smallest) of tied classes.

    Parameters
    ----------
    indices : ndarray of shape (n_rows, k)
        Row numbers of the neighbours in the base.
    label_classes : ndarray of shape (n_base,)
        Every base row's class number (its position in ``classes``).
    classes : ndarray
        The sorted distinct labels.
    """
    n_rows, n_classes = indices.shape[0], classes.size
    neighbour_classes = label_classes[indices]
    flat = (np.arange(n_rows, dtype=np.int64)[:, None] * n_classes + neighbour_classes).ravel()
    counts = np.bincount(flat, minlength=n_rows * n_classes).reshape(n_rows, n_classes)
    return classes[counts.argmax(axis=1)]


@dataclass
class FaissFlat:
    """faiss-cpu IndexFlatL2 plus the label table the numpy vote needs."""

    index: Any
    classes: np.ndarray
    label_classes: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray) -> FaissFlat:
        index = load_faiss()[0].IndexFlatL2(X.shape[1])
        index.add(X)
        classes = np.unique(y)
        return cls(index, classes, np.searchsorted(classes, y))

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(Q, k)

    def predict(self, Q: np.ndarray, k: int) -> np.ndarray:
        _, indices = self.index.search(Q, k)
        return faiss_vote(indices, self.label_classes, self.classes)


@dataclass
class Operation:
    """One timed call of one engine, and its wall and CPU times over the rounds."""

    engine: str
    operation: str
    call: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.operation}"


@dataclass
class Fitted:
    """Every engine fitted on one workload, and the one-off fit times."""

    gpuknn: Any
    faiss: FaissFlat
    sklearn: Any
    fit_seconds: dict[str, float]


def fit_engines(w: Workload) -> Fitted:
    """Fit gpuknn, faiss and scikit-learn on ``w``, timing each fit once."""
    from sklearn.neighbors import KNeighborsClassifier  # noqa: PLC0415

    from gpuknn import KNN  # noqa: PLC0415

    fits = {
        "gpuknn": lambda: KNN(k=w.k, predictor_type="classifier",
                              sample_size=w.X.shape[0], index_type="faiss.Flat",
                              device="cpu").fit(w.X, w.y),
        "faiss": lambda: FaissFlat.fit(w.X, w.y),
        "sklearn": lambda: KNeighborsClassifier(n_neighbors=w.k, algorithm="brute").fit(w.X,
                                                                                        w.y),
    }
    fitted, seconds = {}, {}
    for name, fit in fits.items():
        started = time.perf_counter()
        fitted[name] = fit()
        seconds[name] = time.perf_counter() - started
    return Fitted(fitted["gpuknn"], fitted["faiss"], fitted["sklearn"], seconds)


def operations(w: Workload, fitted: Fitted) -> list[Operation]:
    """The seven timed operations of one workload, in their report order."""
    est, flat, skl, Q, k = fitted.gpuknn, fitted.faiss, fitted.sklearn, w.Q, w.k
    buffer = np.empty((Q.shape[0], w.X.shape[0]), dtype=np.float32)
    base_t = w.X.T
    return [
        Operation("gpuknn", "kneighbors", lambda: est.kneighbors(Q)),
        Operation("gpuknn", "predict", lambda: est.predict(Q)),
        Operation("faiss", "kneighbors", lambda: flat.search(Q, k)),
        Operation("faiss", "predict", lambda: flat.predict(Q, k)),
        Operation("sklearn", "kneighbors", lambda: skl.kneighbors(Q)),
        Operation("sklearn", "predict", lambda: skl.predict(Q)),
        Operation("numpy-gemm", "gemm", lambda: np.matmul(Q, base_t, out=buffer)),
    ]


def untied_rows(distances: np.ndarray, k: int) -> np.ndarray:
    """Rows whose k-th and (k+1)-th distances differ by a relative gap above TIE_RTOL.

    Parameters
    ----------
    distances : ndarray of shape (n_rows, k + 1 or more)
        Each row's sorted distances (faiss's, asked for k + 1 neighbours).
    k : int

    Returns
    -------
    ndarray of bool, shape (n_rows,)
    """
    kth, next_ = distances[:, k - 1].astype(np.float64), distances[:, k].astype(np.float64)
    return (next_ - kth) > TIE_RTOL * np.maximum(np.abs(next_), 1e-30)


def same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: do the two index lists hold the same neighbours (in any order)?"""
    return (np.sort(a, axis=1) == np.sort(b, axis=1)).all(axis=1)


def fraction(mask: np.ndarray) -> float | None:
    """The share of True in ``mask`` (None when it is empty)."""
    return float(mask.mean()) if mask.size else None


def check_results(w: Workload, fitted: Fitted) -> dict[str, Any]:
    """Agreement of gpuknn (and sklearn) with faiss on the rows without a tie at the k-th."""
    k = w.k
    d_wide, i_wide = fitted.faiss.search(w.Q, k + 1)
    i_faiss = i_wide[:, :k]
    untied = untied_rows(d_wide, k)
    d_gk, i_gk = fitted.gpuknn.kneighbors(w.Q)
    _, i_sk = fitted.sklearn.kneighbors(w.Q)
    p_faiss = faiss_vote(i_faiss, fitted.faiss.label_classes, fitted.faiss.classes)
    p_gk, p_sk = fitted.gpuknn.predict(w.Q), fitted.sklearn.predict(w.Q)
    sets_gk, sets_sk = same_sets(i_gk, i_faiss), same_sets(i_sk, i_faiss)
    agree = untied & sets_gk
    # gpuknn returns Euclidean distances, faiss squared ones.
    rel = np.abs(d_gk[agree].astype(np.float64) ** 2 - np.sort(d_wide[agree, :k], axis=1))
    rel /= np.maximum(np.abs(d_wide[agree, :k]), 1e-30)
    return {
        "rows": int(w.Q.shape[0]),
        "untied_rows": int(untied.sum()),
        "gpuknn_vs_faiss_index_sets_untied": fraction(sets_gk[untied]),
        "gpuknn_vs_faiss_index_order_untied": fraction((i_gk == i_faiss).all(axis=1)[untied]),
        "gpuknn_vs_faiss_index_sets_all": fraction(sets_gk),
        "gpuknn_vs_faiss_predict_untied": fraction((p_gk == p_faiss)[untied]),
        "gpuknn_vs_faiss_predict_all": fraction(p_gk == p_faiss),
        "gpuknn_sq_distance_max_rel_diff": float(rel.max()) if rel.size else None,
        "sklearn_vs_faiss_index_sets_untied": fraction(sets_sk[untied]),
        "sklearn_vs_faiss_predict_untied": fraction((p_sk == p_faiss)[untied]),
        "sklearn_vs_faiss_predict_all": fraction(p_sk == p_faiss),
        "accuracy": {"gpuknn": float((p_gk == w.y_q).mean()),
                     "faiss+vote": float((p_faiss == w.y_q).mean()),
                     "sklearn": float((p_sk == w.y_q).mean())},
    }


def make_rows(w: Workload, ops: list[Operation]) -> list[dict[str, Any]]:
    """One row per (engine, operation), with queries/s, GEMM multiples and gpuknn ratios."""
    n_queries = w.Q.shape[0]
    by_key = {(op.engine, op.operation): op for op in ops}
    gemm = min(by_key[("numpy-gemm", "gemm")].times)
    flops = 2.0 * n_queries * w.X.shape[0] * w.X.shape[1]
    rows = []
    for op in ops:
        key = (op.engine, op.operation)
        stats = timed.best_median_cores(op.times, op.cpu_times)
        best, median = stats["best_s"], stats["median_s"]
        row = {
            "workload": w.name, "engine": op.engine, "operation": op.operation,
            "label": LABELS[key], "n_base": int(w.X.shape[0]), "dim": int(w.X.shape[1]),
            "n_queries": int(n_queries), "k": w.k, "times_s": op.times,
            "best_s": best, "median_s": median,
            "qps_best": n_queries / best, "qps_median": n_queries / median,
            "x_gemm_floor": best / gemm,
            # Process CPU seconds per wall second in the best repetition: the cores obtained.
            "cpu_s": op.cpu_times, "cores_used_best": stats["cores_used_best"],
        }
        if op.engine == "numpy-gemm":
            row["gflops_best"] = flops / best / 1e9
        if op.engine == "gpuknn":
            # > 1 means gpuknn is faster than the peer: the ratio of the best times, and the
            # median over repetitions of the ratio within one repetition (robust to drift).
            row["speed_ratio_vs"] = {f"{e}:{o}": timed.time_ratio(by_key[(e, o)].times, op.times)
                                     for e, o in PEERS[op.operation]}
        rows.append(row)
    return rows


def environment() -> dict[str, Any]:
    """The machine, versions, faiss's build and every loaded thread pool (after the run)."""
    import scipy  # noqa: PLC0415
    import sklearn  # noqa: PLC0415
    import threadpoolctl  # noqa: PLC0415

    faiss, in_order = load_faiss()
    return {
        **machine(),
        "versions": {"gpuknn": __version__, "numpy": np.__version__,
                     "faiss": faiss.__version__, "scikit-learn": sklearn.__version__,
                     "scipy": scipy.__version__, "threadpoolctl": threadpoolctl.__version__},
        "faiss_compile_options": faiss.get_compile_options(),
        "faiss_omp_max_threads": faiss.omp_get_max_threads(),
        "sklearn_openmp_started_before_faiss_import": in_order,
        "threadpool_info": threadpoolctl.threadpool_info(),
    }


def measure_workload(w: Workload, repeats: int, settle: float) -> tuple[dict[str, Any],
                                                                        list[dict[str, Any]]]:
    """Fit, time and check one workload: its report entry and its rows."""
    load_before = timed.load_average()
    fitted = fit_engines(w)
    ops = operations(w, fitted)
    timed.time_rounds(ops, repeats, settle_s=settle, seed=ORDER_SEED)
    entry = {"name": w.name, "description": w.description,
             "fit_seconds": fitted.fit_seconds, "checks": check_results(w, fitted),
             "loadavg_before": load_before, "loadavg_after": timed.load_average()}
    return entry, make_rows(w, ops)


def run(quick: bool, repeats: int, settle: float) -> dict[str, Any]:
    """Every workload, timed and checked, and the environment: the JSON report.

    Parameters
    ----------
    quick : bool
        The small workloads (a smoke test).
    repeats : int
        Interleaved rounds per workload.
    settle : float
        Seconds of sleep before every timed call.
    """
    load_faiss()
    report: dict[str, Any] = {"quick": quick, "repeats": repeats, "settle_s": settle,
                              "statistic": STATISTIC, "workloads": [], "rows": []}
    for w in workloads(quick):
        started = time.perf_counter()
        entry, rows = measure_workload(w, repeats, settle)
        report["workloads"].append(entry)
        report["rows"] += rows
        print(f"{w.name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for row in rows:
            print(f"  {row['label']:<34} {row['qps_best']:>10,.0f} q/s  "
                  f"x{row['x_gemm_floor']:.2f} GEMM", file=sys.stderr)
    report["environment"] = environment()
    return report
