"""CPU comparison of gpuknn's exact search and prediction against faiss-cpu and scikit-learn.

Run from the project root::

    python bench/compare.py            # full workloads, about a minute or two on 2 cores
    python bench/compare.py --quick    # small workloads, a smoke test of under 20 s

For every workload all engines run in this one process and their repetitions are
interleaved (repetition r times every operation once, in a seeded random order,
after a short pause), so slow drift of the machine hits every engine alike. Each
operation is called once untimed first (warm-up). The headline number is the
**best** (smallest) wall time of the repetitions; the median, and the median of
the per-repetition gpuknn/peer ratios, are recorded beside it.

Engines and operations
----------------------
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
    The GEMM floor: ``np.matmul(Q, X.T, out=buffer)`` into a preallocated
    ``(n_queries, n_base)`` float32 buffer, i.e. the inner products every exact
    L2 search must compute, without the norms or the top-k.

Outputs ``<out>/cpu_compare.json`` (rows, checks and the environment) and
``<out>/cpu_compare.md`` (tables); ``--quick`` writes ``cpu_compare-quick.*`` so a
smoke test never overwrites a full run.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import sklearn
import threadpoolctl
from _machine import machine  # bench/_machine.py, beside this script
from sklearn.neighbors import KNeighborsClassifier

import gpuknn
from gpuknn import KNN
from gpuknn.datasets import load_letter


def _start_openmp_then_import_faiss() -> Any:
    """Run one scikit-learn OpenMP region, then import faiss.

    Measured here: once faiss-cpu's bundled OpenBLAS (an OpenMP build) is loaded,
    the first and all later OpenMP regions of scikit-learn's brute-force search run
    on a single thread (half the speed on 2 cores) unless scikit-learn had already
    run one. Starting scikit-learn's OpenMP first lets both use every core, so the
    peers are measured at their best.
    """
    rows = np.zeros((64, 2), dtype=np.float32)
    KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(rows, np.zeros(64)).kneighbors(rows)
    return importlib.import_module("faiss")


faiss = _start_openmp_then_import_faiss()
DEFAULT_OUT = Path(__file__).resolve().parent / "results"
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


# ----------------------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------------------
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


def gaussian_mixture(n_base: int, n_queries: int, *, dim: int = 128, n_clusters: int = 100,
                     n_labels: int = 10, center_scale: float = 0.4, seed: int = 20240601,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded Gaussian mixture: base rows, base labels, query rows, query labels.

    ``n_clusters`` centres are drawn from ``N(0, center_scale**2 I_dim)``; every row
    picks a centre uniformly and adds ``N(0, I_dim)`` noise; its label is the
    centre's number modulo ``n_labels``. Queries come from the same distribution
    and are not in the base. With the defaults (128-d, 100 clusters, scale 0.4)
    centres are about as far apart as two noisy rows of one cluster, so classes
    overlap: exact 10-NN voting scores about 0.78 and 1-NN about 0.55 (chance is
    0.1) -- neither trivially separable nor pure noise. Rows are float32, labels
    float32.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, dim)) * center_scale
    assign = rng.integers(0, n_clusters, size=n_base + n_queries)
    rows = (centers[assign] + rng.standard_normal((n_base + n_queries, dim))).astype(np.float32)
    labels = (assign % n_labels).astype(np.float32)
    return rows[:n_base], labels[:n_base], rows[n_base:], labels[n_base:]


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


# ----------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------
@dataclass
class FaissFlat:
    """faiss-cpu IndexFlatL2 plus the label table the numpy vote needs."""

    index: Any
    classes: np.ndarray
    label_classes: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray) -> FaissFlat:
        index = faiss.IndexFlatL2(X.shape[1])
        index.add(X)
        classes = np.unique(y)
        return cls(index, classes, np.searchsorted(classes, y))

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(Q, k)

    def predict(self, Q: np.ndarray, k: int) -> np.ndarray:
        _, indices = self.index.search(Q, k)
        return faiss_vote(indices, self.label_classes, self.classes)


def faiss_vote(indices: np.ndarray, label_classes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Majority label of every row of neighbour ``indices``; ties go to the smallest label.

    One ``bincount`` over ``row * n_classes + class`` gives the (rows, classes) vote
    table; ``argmax`` returns the first (smallest) of tied classes.
    """
    n_rows, n_classes = indices.shape[0], classes.size
    neighbour_classes = label_classes[indices]
    flat = (np.arange(n_rows, dtype=np.int64)[:, None] * n_classes + neighbour_classes).ravel()
    counts = np.bincount(flat, minlength=n_rows * n_classes).reshape(n_rows, n_classes)
    return classes[counts.argmax(axis=1)]


@dataclass
class Operation:
    engine: str
    operation: str
    call: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)


@dataclass
class Fitted:
    """Every engine fitted on one workload, and the one-off fit times."""

    gpuknn: KNN
    faiss: FaissFlat
    sklearn: KNeighborsClassifier
    fit_seconds: dict[str, float]


def fit_engines(w: Workload) -> Fitted:
    fit_seconds = {}
    started = time.perf_counter()
    est = KNN(k=w.k, predictor_type="classifier", sample_size=w.X.shape[0],
              index_type="faiss.Flat", device="cpu").fit(w.X, w.y)
    fit_seconds["gpuknn"] = time.perf_counter() - started
    started = time.perf_counter()
    flat = FaissFlat.fit(w.X, w.y)
    fit_seconds["faiss"] = time.perf_counter() - started
    started = time.perf_counter()
    skl = KNeighborsClassifier(n_neighbors=w.k, algorithm="brute").fit(w.X, w.y)
    fit_seconds["sklearn"] = time.perf_counter() - started
    return Fitted(est, flat, skl, fit_seconds)


def operations(w: Workload, fitted: Fitted) -> list[Operation]:
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


def time_interleaved(ops: list[Operation], repeats: int, settle: float) -> None:
    """Warm every operation up, then time ``repeats`` rounds of all of them.

    Each round runs the operations in a fresh seeded random order, so no operation
    always follows the same one. Before every timed call the script sleeps ``settle``
    seconds: OpenBLAS and OpenMP worker threads spin for a while after a call
    (OpenBLAS about 2**28 cycles), and would otherwise steal a core from whatever
    runs next.
    """
    for op in ops:
        op.call()
    order_rng = np.random.default_rng(ORDER_SEED)
    for _ in range(repeats):
        for i in order_rng.permutation(len(ops)):
            op = ops[i]
            gc.collect()
            time.sleep(settle)
            cpu_started, started = time.process_time(), time.perf_counter()
            op.call()
            op.times.append(time.perf_counter() - started)
            op.cpu_times.append(time.process_time() - cpu_started)


# ----------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------
def untied_rows(distances: np.ndarray, k: int) -> np.ndarray:
    """Rows whose k-th and (k+1)-th faiss distances differ by a relative gap > TIE_RTOL."""
    kth, next_ = distances[:, k - 1].astype(np.float64), distances[:, k].astype(np.float64)
    return (next_ - kth) > TIE_RTOL * np.maximum(np.abs(next_), 1e-30)


def same_sets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: do the two index lists hold the same neighbours (in any order)?"""
    return (np.sort(a, axis=1) == np.sort(b, axis=1)).all(axis=1)


def fraction(mask: np.ndarray) -> float | None:
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
    p_gk = fitted.gpuknn.predict(w.Q)
    p_sk = fitted.sklearn.predict(w.Q)
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


# ----------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------
def make_rows(w: Workload, ops: list[Operation]) -> list[dict[str, Any]]:
    """One row per (engine, operation), with queries/s, GEMM multiples and gpuknn ratios."""
    n_queries = w.Q.shape[0]
    best = {(op.engine, op.operation): min(op.times) for op in ops}
    times = {(op.engine, op.operation): op.times for op in ops}
    gemm = best[("numpy-gemm", "gemm")]
    flops = 2.0 * n_queries * w.X.shape[0] * w.X.shape[1]
    rows = []
    for op in ops:
        key = (op.engine, op.operation)
        median = statistics.median(op.times)
        at_best = op.times.index(best[key])
        row = {
            "workload": w.name, "engine": op.engine, "operation": op.operation,
            "label": LABELS[key], "n_base": int(w.X.shape[0]), "dim": int(w.X.shape[1]),
            "n_queries": int(n_queries), "k": w.k, "times_s": op.times,
            "best_s": best[key], "median_s": median,
            "qps_best": n_queries / best[key], "qps_median": n_queries / median,
            "x_gemm_floor": best[key] / gemm,
            # Process CPU seconds per wall second in the best repetition: the cores obtained.
            "cpu_s": op.cpu_times, "cores_used_best": op.cpu_times[at_best] / best[key],
        }
        if op.engine == "numpy-gemm":
            row["gflops_best"] = flops / best[key] / 1e9
        if op.engine == "gpuknn":
            # > 1 means gpuknn is faster than the peer: the ratio of the best times, and the
            # median over repetitions of the ratio within one repetition (robust to drift).
            row["speed_ratio_vs"] = {
                f"{e}:{o}": {"of_best": best[(e, o)] / best[key],
                             "median_paired": statistics.median(
                                 p / g for p, g in zip(times[(e, o)], op.times, strict=True))}
                for e, o in PEERS[op.operation]}
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """Versions, CPU and every loaded thread pool (call after the engines have run)."""
    return {
        **machine(),
        "versions": {"gpuknn": gpuknn.__version__, "numpy": np.__version__,
                     "faiss": faiss.__version__, "scikit-learn": sklearn.__version__,
                     "scipy": scipy.__version__, "threadpoolctl": threadpoolctl.__version__},
        "faiss_compile_options": faiss.get_compile_options(),
        "faiss_omp_max_threads": faiss.omp_get_max_threads(),
        "sklearn_openmp_started_before_faiss_import": True,
        "threadpool_info": threadpoolctl.threadpool_info(),
    }


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [
        "# gpuknn CPU comparison: exact search and prediction",
        "",
        f"Run {env['date_utc']} on `{env['hostname']}`; {report['repeats']} interleaved "
        f"repetitions (each in a random order, {report['settle_s']} s pause before every "
        f"call) after one warm-up; times are the **{STATISTIC}** (smallest) of the "
        "repetitions. `x GEMM` is the best time as a multiple of the best time of a bare "
        "numpy float32 `Q @ X.T` of the same shape. `gpuknn ÷ this` is gpuknn's speed over "
        "this row's, for the same operation (above 1, gpuknn is faster): first the ratio of "
        "the best times, then, in brackets, the median over repetitions of the ratio within "
        "one repetition. `cores` is process CPU time over wall time in the best repetition.",
        "",
    ]
    for w in report["workloads"]:
        lines += _workload_table(w, [r for r in report["rows"] if r["workload"] == w["name"]])
    lines += _environment_lines(env)
    return "\n".join(lines) + "\n"


def _workload_table(w: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    gk = {r["operation"]: r for r in rows if r["engine"] == "gpuknn"}
    lines = [f"## {w['name']}", "", w["description"] + ".", "",
             "| Engine / operation | best s | median s | queries/s | x GEMM | cores "
             "| gpuknn ÷ this |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "-"
        if r["operation"] in gk and r["engine"] != "gpuknn":
            both = gk[r["operation"]]["speed_ratio_vs"][f"{r['engine']}:{r['operation']}"]
            ratio = f"{both['of_best']:.2f} ({both['median_paired']:.2f})"
        label = r["label"]
        if "gflops_best" in r:
            label += f" ({r['gflops_best']:.0f} GFLOP/s)"
        lines.append(f"| {label} | {r['best_s']:.4f} | {r['median_s']:.4f} | "
                     f"{r['qps_best']:,.0f} | {r['x_gemm_floor']:.2f} | "
                     f"{r['cores_used_best']:.2f} | {ratio} |")
    c = w["checks"]
    lines += ["", f"Checks on {c['untied_rows']:,} of {c['rows']:,} rows without a tie at the "
              f"k-th faiss distance (relative gap > {TIE_RTOL:g}): gpuknn's neighbour sets equal "
              f"faiss's on {_pct(c['gpuknn_vs_faiss_index_sets_untied'])} (same order: "
              f"{_pct(c['gpuknn_vs_faiss_index_order_untied'])}), predictions equal faiss + vote "
              f"on {_pct(c['gpuknn_vs_faiss_predict_untied'])} (all rows: "
              f"{_pct(c['gpuknn_vs_faiss_predict_all'])}); sklearn's sets "
              f"{_pct(c['sklearn_vs_faiss_index_sets_untied'])}, predictions "
              f"{_pct(c['sklearn_vs_faiss_predict_untied'])} (all rows: "
              f"{_pct(c['sklearn_vs_faiss_predict_all'])}). Max relative difference of squared "
              f"distances, gpuknn vs faiss: {_sci(c['gpuknn_sq_distance_max_rel_diff'])}. "
              "Accuracy: " + ", ".join(f"{e} {a:.4f}" for e, a in c["accuracy"].items())
              + ". Fit (one-off, not interleaved): "
              + ", ".join(f"{e} {s:.3f} s" for e, s in w["fit_seconds"].items())
              + ". Load average (1, 5, 15 min) before / after: "
              + f"{_load(w['loadavg_before'])} / {_load(w['loadavg_after'])}.", ""]
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def _load(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes competing for the cores)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _environment_lines(env: dict[str, Any]) -> list[str]:
    cpu = env["cpu"]
    lines = ["## Environment", "",
             f"- CPU: {cpu['model']}; {cpu['logical_cpus']} logical CPUs "
             f"({cpu['usable_cpus']} usable, {cpu['physical_cores']} physical cores); "
             f"flags: {', '.join(cpu['simd_flags'])}",
             f"- {env['platform']}, Python {env['python']}",
             "- " + ", ".join(f"{n} {v}" for n, v in env["versions"].items()),
             f"- faiss compile options: `{env['faiss_compile_options'].strip()}`; "
             f"OpenMP max threads {env['faiss_omp_max_threads']}; scikit-learn's OpenMP "
             "started before faiss was imported (see `_start_openmp_then_import_faiss`)",
             f"- thread variables: {env['thread_env'] or 'none set'}",
             "", "| Library | API | version | architecture | threads | threading | file |",
             "|---|---|---|---|---:|---|---|"]
    for lib in env["threadpool_info"]:
        lines.append(f"| {lib.get('prefix')} | {lib.get('internal_api')} | "
                     f"{lib.get('version')} | {lib.get('architecture', '-')} | "
                     f"{lib.get('num_threads')} | {lib.get('threading_layer', '-')} | "
                     f"{Path(lib.get('filepath', '')).name} |")
    return lines


# ----------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------
def run(quick: bool, repeats: int, settle: float) -> dict[str, Any]:
    report: dict[str, Any] = {"quick": quick, "repeats": repeats, "settle_s": settle,
                              "statistic": STATISTIC, "workloads": [], "rows": []}
    for w in workloads(quick):
        started, load_before = time.perf_counter(), loadavg()
        fitted = fit_engines(w)
        ops = operations(w, fitted)
        time_interleaved(ops, repeats, settle)
        checks = check_results(w, fitted)
        report["workloads"].append({"name": w.name, "description": w.description,
                                    "fit_seconds": fitted.fit_seconds, "checks": checks,
                                    "loadavg_before": load_before, "loadavg_after": loadavg()})
        report["rows"] += make_rows(w, ops)
        print(f"{w.name}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for row in report["rows"][-len(ops):]:
            print(f"  {row['label']:<34} {row['qps_best']:>10,.0f} q/s  "
                  f"x{row['x_gemm_floor']:.2f} GEMM", file=sys.stderr)
    report["environment"] = environment()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small workloads and 2 repetitions (a smoke test, < 20 s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per operation (default 5, or 2 with --quick)")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds of sleep before every timed call (default 0.2, or 0.05 "
                             "with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    settle = args.settle if args.settle is not None else (0.05 if args.quick else 0.2)
    report = run(args.quick, repeats, settle)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu_compare-quick" if args.quick else "cpu_compare"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report))
    print(f"wrote {args.out / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
