"""Multi-model serving against its peers: load, invoke, and 1,000 models in one server.

Run from the project root with the project's virtual environment::

    python bench/multimodel.py              # the issue's sizes: about 6 minutes on 2 cores
    python bench/multimodel.py --quick      # small sizes, a smoke test: about a minute

Goals (each a ratio in this run, :mod:`gpuknn.benchmark.multimodel` says how):

1. ``POST /models`` of a 1M x 128 Flat model into a running server: at most 1.5x
   ``KNNModel.load`` of the same directory;
2. ``/models/<name>/invoke`` against a single-model server of the same model (covtype-like
   200k x 54, k=10), 1 row and 581 rows: p50 at most 1.1x;
3. 1,000 models of 10k x 16 in one server: resident memory at most 1.2x the sum of their
   files (with 1 and 2 workers); the time to load them all and the p50 of invoking a
   random one.

Writes ``<out>/multimodel.json`` and ``<out>/multimodel.md`` (``multimodel-quick.*`` with
``--quick``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gpuknn import KNN
from gpuknn.benchmark import multimodel
from gpuknn.benchmark.machine import machine
from gpuknn.benchmark.memory_data import make_dataset

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FULL = {"big": 1_000_000, "covtype": 200_000, "small": 1000, "small_rows": 10_000}
QUICK = {"big": 100_000, "covtype": 50_000, "small": 100, "small_rows": 10_000}


def fit_and_save(X: np.ndarray, y: np.ndarray, path: Path, k: int = 10) -> Path:
    model = KNN(k=k, predictor_type="classifier", sample_size=len(X), device="cpu")
    return model.fit(X, y).model.save(path)


def small_models(count: int, rows: int, root: Path) -> list[Path]:
    """``count`` models of ``rows`` x 16: five Gaussian classes each, seeded per model."""
    paths = []
    for i in range(count):
        rng = np.random.default_rng([2026, i])
        y = rng.integers(0, 5, rows)
        X = (rng.normal(scale=3.0, size=(5, 16))[y] + rng.normal(size=(rows, 16)))
        paths.append(fit_and_save(X.astype(np.float32), y.astype(np.float32),
                                  root / f"small-{i:04d}", k=5))
    return paths


def markdown(report: dict) -> str:
    goals = multimodel.GOALS
    host = report["machine"]
    cpu = host["cpu"]
    load, lines = report["load"], ["# Multi-model serving", "",
                                   f"{cpu.get('model')}, {cpu.get('usable_cpus')} usable "
                                   f"cores, Python {host['python']}, {host['date_utc']}", ""]
    lines += ["| measurement | gpuknn multi-model | peer | ratio, median (IQR) | goal |",
              "|---|---:|---:|---:|---:|"]
    ratio = load["ratio"]
    lines.append(f"| load {report['sizes']['big']:,} x 128 Flat "
                 f"({load['model_bytes'] / 2**20:.0f} MiB) | {load['server_s']['median']:.3f} s"
                 f" | KNNModel.load {load['load_s']['median']:.3f} s | {ratio['median']:.2f}x "
                 f"({ratio['q1']:.2f}-{ratio['q3']:.2f}) | <= {goals['load']}x |")
    cold = load["cold_ratio"]
    lines.append(f"| cold start: load and a first 1-row request | "
                 f"{load['server_cold_s']['median']:.3f} s | load and a first query "
                 f"{load['load_cold_s']['median']:.3f} s | {cold['median']:.2f}x "
                 f"({cold['q1']:.2f}-{cold['q3']:.2f}) | |")
    for size in ("1", "581"):
        row = report["invoke"][size]
        lines.append(f"| invoke, {size} row(s), p50 | {row['multi_p50_s']['median'] * 1e3:.2f} ms"
                     f" | single-model server {row['single_p50_s']['median'] * 1e3:.2f} ms | "
                     f"{row['ratio']['median']:.3f}x ({row['ratio']['q1']:.3f}-"
                     f"{row['ratio']['q3']:.3f}) | <= {goals['invoke_p50']}x |")
    for many in report["many"]:
        lines.append(f"| {many['models']:,} models, {many['workers']} worker(s): resident "
                     f"(PSS added) | {many['added_pss_bytes'] / 2**20:.0f} MiB | their files "
                     f"{many['files_bytes'] / 2**20:.0f} MiB | {many['resident_ratio']:.2f}x | "
                     f"<= {goals['resident']}x |")
    lines += ["", "| models | workers | load all | load each, p50 | accounted / files | "
              "accounted / resident | invoke a random one, p50 | single-model server, p50 |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for many in report["many"]:
        lines.append(f"| {many['models']:,} | {many['workers']} | {many['load_all_s']:.1f} s | "
                     f"{many['load_each_s']['median'] * 1e3:.1f} ms | "
                     f"{many['accounted_ratio']:.2f}x | {many['accounted_over_resident']:.2f}x | "
                     f"{many['invoke_random_s']['median'] * 1e3:.2f} ms | "
                     f"{many['invoke_single_s']['median'] * 1e3:.2f} ms |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for multimodel.json and .md (default: bench/results)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpuknn-multimodel-") as folder:
        work = Path(folder)
        X, y = make_dataset("sift-like", sizes["big"])
        big = fit_and_save(X, y, work / "big")
        del X, y
        print(f"built the {sizes['big']:,} x 128 model", flush=True)
        load = multimodel.load_ratio(big, work, rounds=args.rounds)
        print(f"load: {load['ratio']['median']:.2f}x KNNModel.load", flush=True)
        X, y = make_dataset("covtype-like", sizes["covtype"] + 4000)
        covtype = fit_and_save(X[:-4000], y[:-4000], work / "covtype")
        invoke = multimodel.invoke_ratio(covtype, X[-4000:], work, rounds=args.rounds)
        print(f"invoke p50: {invoke['1']['ratio']['median']:.3f}x (1 row), "
              f"{invoke['581']['ratio']['median']:.3f}x (581 rows)", flush=True)
        smalls = small_models(sizes["small"], sizes["small_rows"], work)
        many = [multimodel.many_models(smalls, 16, work, workers=workers)
                for workers in (1, 2)]
        print(f"{sizes['small']} models: resident {many[0]['resident_ratio']:.2f}x (1 worker), "
              f"{many[1]['resident_ratio']:.2f}x (2 workers) of their files", flush=True)
    report = {"machine": machine(), "sizes": sizes, "load": load, "invoke": invoke,
              "many": many, "seconds": time.perf_counter() - began}
    name = "multimodel-quick" if args.quick else "multimodel"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
