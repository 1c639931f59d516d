"""GPU benchmarks for issue 6, each beside its measured floor and the CPU path.

Run by ``bench/gpu_check.sh`` on a machine with a CUDA GPU and CuPy::

    python bench/gpu_bench.py [--quick] [--out bench/results]

Measured (best of ``--repeats`` after one warm-up, synchronised around every call):

* **GEMM floor**: the card's FP32 GEMM rate on an 8192^3 ``matmul`` (TF32 off), and
  its memory bandwidth from a 1 GiB device-to-device copy (bytes read + written).
* **exact search**: ``ExactSearch`` on the GPU, 1,000,000 x 128 base, 10,000 queries,
  k=10, float32 (the sift-like shape); against the GEMM floor ``2 Q N d / rate``, and
  against the CPU path (``ExactSearch`` with numpy) on the same data, timed on 200
  queries and scaled. The GPU neighbour ids are checked equal to the CPU's on those
  200 queries (rows without a tie at the k-th distance).
* **fjlt**: the fused kernel on 1,000,000 x 1024 rows to 128; bytes read + written
  over time, against the measured bandwidth.
* **vote / mean**: the kernels on 1,000,000 queries x k=100, against the exact search
  time of the same number of queries (scaled from the search above).
* **train and predict**: the whole ``gpuknn train`` (a subprocess, File mode) on the
  covtype-shaped set of ``bench/train_covtype.py`` (500,000 x 54 RecordIO, sample
  200,000, Flat, k=10, 58,000 test rows scored), then a 10,000-row ``predict`` of the
  model it wrote (host rows in, host labels out), on the GPU and on the CPU path
  (``CUDA_VISIBLE_DEVICES=""`` for the job, ``device="cpu"`` for the predict) in the
  same run. The two jobs' test accuracies are reported side by side.

Results go to ``gpu_bench[-quick].json`` and ``.md`` with the card, driver and
library versions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import train_covtype  # bench/train_covtype.py, beside this script

from gpuknn import KNNModel, _backend, kernels
from gpuknn.model.reduction import FJLT
from gpuknn.search.exact import ExactSearch
from gpuknn.search.faiss_gpu import faiss_has_gpu
from gpuknn.search.faiss_index import require_faiss

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGETS = {"search_x_floor": 2.0, "search_gpu_over_cpu": 50.0, "fjlt_bandwidth_share": 0.5,
           "vote_share_of_search": 0.05}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a smoke test")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not _backend.has_gpu():
        print("gpu_bench: no CUDA GPU with CuPy here; nothing measured", file=sys.stderr)
        return 2
    cp = _backend.array_module("gpu")
    sizes = ({"base": 100_000, "queries": 1_000, "dim": 128, "rows": 100_000}
             if args.quick else
             {"base": 1_000_000, "queries": 10_000, "dim": 128, "rows": 1_000_000})
    report: dict[str, Any] = {"environment": environment(cp), "sizes": sizes,
                              "targets": TARGETS}
    timer = Timer(cp, args.repeats)
    report["floors"] = floors(cp, timer)
    report["search"] = search(cp, timer, sizes, report["floors"])
    report["fjlt"] = fjlt(cp, timer, sizes["rows"], report["floors"])
    report["vote_mean"] = vote_mean(cp, timer, sizes["rows"], report["search"])
    report["train_predict"] = train_and_predict(args.quick, args.repeats)
    stem = "gpu_bench-quick" if args.quick else "gpu_bench"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(render(report))
    print(render(report))
    return 0


class Timer:
    """Best wall time of a GPU call, synchronised, after a warm-up."""

    def __init__(self, cp, repeats: int):
        self.cp, self.repeats = cp, repeats

    def best(self, function) -> float:
        function()
        self.cp.cuda.Device().synchronize()
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            function()
            self.cp.cuda.Device().synchronize()
            times.append(time.perf_counter() - start)
        return min(times)


def environment(cp) -> dict[str, Any]:
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return {"gpu": name.decode() if isinstance(name, bytes) else name,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "driver": cp.cuda.runtime.driverGetVersion(),
            "runtime": cp.cuda.runtime.runtimeGetVersion(), "cupy": cp.__version__,
            "numpy": np.__version__, "python": sys.version.split()[0],
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def floors(cp, timer: Timer) -> dict[str, float]:
    n = 8192
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    gemm_s = timer.best(lambda: a @ b)
    block = cp.empty(1 << 28, dtype=cp.float32)  # 1 GiB
    copy_s = timer.best(block.copy)
    return {"fp32_gemm_tflops": 2 * n**3 / gemm_s / 1e12,
            "bandwidth_gb_s": 2 * block.nbytes / copy_s / 1e9}


def search(cp, timer: Timer, sizes: dict[str, int], floor: dict[str, float]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((sizes["base"], sizes["dim"]), dtype=np.float32)
    queries = rng.standard_normal((sizes["queries"], sizes["dim"]), dtype=np.float32)
    gpu = ExactSearch(cp.asarray(base), "L2", xp=cp)
    gpu_queries = cp.asarray(queries)
    gpu_s = timer.best(lambda: gpu.search(gpu_queries, 10))
    cpu = ExactSearch(base, "L2", partition="never")  # Gaussian data: brute force anyway
    sample = queries[:200]
    cpu_s = timer.best(lambda: cpu.search(sample, 10)) * len(queries) / len(sample)
    _, gpu_ids = gpu.search(cp.asarray(sample), 10)
    _, cpu_ids = cpu.search(sample, 10)
    flops = 2 * sizes["queries"] * sizes["base"] * sizes["dim"]
    floor_s = flops / (floor["fp32_gemm_tflops"] * 1e12)
    return {"queries": sizes["queries"], "gpu_s": gpu_s, "gemm_floor_s": floor_s,
            "x_floor": gpu_s / floor_s,
            "cpu_s_scaled": cpu_s, "gpu_over_cpu": cpu_s / gpu_s,
            "ids_equal_share": float((gpu_ids.get() == cpu_ids).all(axis=1).mean()),
            "faiss_gpu_flat_s": faiss_gpu_flat(base, queries, timer)}


def faiss_gpu_flat(base: np.ndarray, queries: np.ndarray, timer: Timer) -> float | None:
    """faiss-gpu's ``GpuIndexFlatL2`` on the same search, where faiss has GPU support.

    The issue lets ``faiss.Flat`` use faiss-gpu or the CuPy search, whichever is faster;
    gpuknn uses the CuPy search everywhere until this says otherwise.
    """
    faiss = require_faiss()
    if not faiss_has_gpu(faiss):
        return None
    resources = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatL2(resources, base.shape[1])
    index.add(base)
    return timer.best(lambda: index.search(queries, 10))


def fjlt(cp, timer: Timer, rows: int, floor: dict[str, float]) -> dict[str, Any]:
    transform = FJLT.fit(1024, 128, seed=0)
    X = cp.random.standard_normal((rows, 1024), dtype=cp.float32)
    flips = cp.asarray(transform.flips, dtype=cp.float32)
    keep = cp.asarray(transform.keep)
    scale = float(1 / np.sqrt(128))
    seconds = timer.best(lambda: kernels.fjlt(X, flips, keep, scale, xp=cp))
    moved = rows * (1024 + 128) * 4
    check = transform.transform(X[:1000].get())
    got = kernels.fjlt(X[:1000], flips, keep, scale, xp=cp).get()
    return {"seconds": seconds, "gb_s": moved / seconds / 1e9,
            "bandwidth_share": moved / seconds / 1e9 / floor["bandwidth_gb_s"],
            "max_abs_error_vs_twin": float(np.abs(got - check).max())}


def vote_mean(cp, timer: Timer, queries: int, search_result: dict[str, Any]) -> dict[str, Any]:
    k, n_classes = 100, 10
    classes = cp.random.randint(0, n_classes, (queries, k)).astype(cp.int64)
    labels = cp.random.standard_normal((queries, k), dtype=cp.float32)
    found = cp.ones((queries, k), dtype=cp.bool_)
    vote_s = timer.best(lambda: kernels.vote(classes, n_classes, xp=cp))
    mean_s = timer.best(lambda: kernels.mean(labels, found, xp=cp))
    search_s = search_result["gpu_s"] * queries / search_result["queries"]
    return {"vote_s": vote_s, "mean_s": mean_s, "search_s_same_queries": search_s,
            "vote_share_of_search": vote_s / search_s, "mean_share_of_search": mean_s / search_s}


def train_and_predict(quick: bool, repeats: int,
                      devices: tuple[str, ...] = ("cpu", "gpu")) -> dict[str, Any]:
    n_train, n_test, sample = (train_covtype.QUICK_ROWS if quick else
                               (train_covtype.TRAIN_ROWS, train_covtype.TEST_ROWS,
                                train_covtype.SAMPLE_SIZE))
    result: dict[str, Any] = {"train_rows": n_train, "test_rows": n_test,
                              "sample_size": sample}
    with tempfile.TemporaryDirectory(prefix="gpuknn-gpu-bench-") as scratch:
        data = train_covtype.prepare(Path(scratch), n_train, n_test, sample)
        root, command = data["file_root"], train_covtype.gpuknn_command()
        queries = np.ascontiguousarray(data["X"][n_train:][:10_000], dtype=np.float32)
        for device in devices:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if device == "cpu":  # the job's CuPy sees no GPU: gpuknn train takes the CPU path
                os.environ["CUDA_VISIBLE_DEVICES"] = ""
            try:
                job = train_covtype.run_job(command, root, "File", 0,
                                            Path(scratch) / f"{device}.log")
            finally:
                if visible is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = visible
            parsed = train_covtype.parse_job(job)
            result[f"{device}_job"] = {key: parsed.get(key) for key in (
                "exit_code", "wall_s", "throughput_metric", "test_accuracy", "log_tail")}
            ran_on = re.search(r"; device (cpu|gpu)", job.output)  # train.py's log line
            result[f"{device}_job"]["ran_on"] = ran_on.group(1) if ran_on else None
            if job.exit_code == 0:
                result[f"{device}_predict_s"] = _best_predict(root / "model", device, queries,
                                                              repeats)
    if "cpu_predict_s" in result and "gpu_predict_s" in result:
        cpu, gpu = result["cpu_job"], result["gpu_job"]
        result["job_gpu_over_cpu"] = cpu["wall_s"] / gpu["wall_s"]
        result["predict_gpu_over_cpu"] = result["cpu_predict_s"] / result["gpu_predict_s"]
    return result


def _best_predict(model_dir: Path, device: str, queries: np.ndarray, repeats: int) -> float:
    model = KNNModel.load(model_dir, device=device)
    model.predict(queries[:10])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(queries)  # numpy in, numpy out: includes the copies to and from a GPU
        times.append(time.perf_counter() - start)
    return min(times)


def render(report: dict[str, Any]) -> str:
    env, fl, se, fj, vm = (report[key] for key in ("environment", "floors", "search", "fjlt",
                                                   "vote_mean"))
    sizes = report["sizes"]
    return "\n".join([
        f"# GPU benchmarks: {env['gpu']} (sm {env['compute_capability']}, "
        f"{env['memory_gib']} GiB), driver {env['driver']}, CUDA runtime {env['runtime']}, "
        f"CuPy {env['cupy']}; {env['date_utc']}", "",
        f"Floors: FP32 GEMM {fl['fp32_gemm_tflops']:.1f} TFLOP/s, memory "
        f"{fl['bandwidth_gb_s']:.0f} GB/s (read + write). `python bench/gpu_bench.py`.", "",
        "| measure | result | floor or peer | ratio | target |", "|---|---:|---:|---:|---:|",
        f"| exact search {sizes['base']:,} x {sizes['dim']}, {sizes['queries']:,} queries, k=10 "
        f"| {se['gpu_s'] * 1e3:.1f} ms | GEMM floor {se['gemm_floor_s'] * 1e3:.1f} ms | "
        f"{se['x_floor']:.2f}x floor | <= 2x |",
        f"| the same on the CPU path (scaled from 200 queries) | {se['cpu_s_scaled']:.1f} s | "
        f"| GPU {se['gpu_over_cpu']:.0f}x faster | >= 50x |",
        f"| fjlt {sizes['rows']:,} x 1024 -> 128 | {fj['seconds'] * 1e3:.2f} ms, "
        f"{fj['gb_s']:.0f} GB/s | {fl['bandwidth_gb_s']:.0f} GB/s | "
        f"{fj['bandwidth_share']:.0%} of bandwidth | >= 50% |",
        f"| vote, {sizes['rows']:,} queries x k=100 | {vm['vote_s'] * 1e3:.2f} ms | search "
        f"{vm['search_s_same_queries'] * 1e3:.0f} ms | {vm['vote_share_of_search']:.2%} | < 5% |",
        f"| mean, the same | {vm['mean_s'] * 1e3:.2f} ms | | {vm['mean_share_of_search']:.2%} "
        "| < 5% |",
        *_train_predict_rows(report["train_predict"]), "",
        _faiss_gpu_row(se),
        f"GPU and CPU neighbour ids equal on {se['ids_equal_share']:.1%} of 200 query rows; "
        f"fjlt kernel vs numpy twin, max abs error {fj['max_abs_error_vs_twin']:.2e}.", ""])


def _faiss_gpu_row(se: dict[str, Any]) -> str:
    if se.get("faiss_gpu_flat_s") is None:
        return "faiss-gpu is not installed here: no GpuIndexFlatL2 comparison."
    return (f"faiss-gpu GpuIndexFlatL2 on the same search: {se['faiss_gpu_flat_s'] * 1e3:.1f} ms "
            f"(gpuknn's CuPy search is {se['faiss_gpu_flat_s'] / se['gpu_s']:.2f}x its speed).")


def _train_predict_rows(tp: dict[str, Any]) -> list[str]:
    if "job_gpu_over_cpu" not in tp:
        exits = ", ".join(f"{key} exit {tp[key]['exit_code']}" for key in ("cpu_job", "gpu_job")
                          if key in tp)
        return [f"| `gpuknn train` covtype-shaped | not compared: {exits} (see the JSON) | | | |"]
    cpu, gpu = tp["cpu_job"], tp["gpu_job"]
    if gpu.get("ran_on") != "gpu":
        return [f"| `gpuknn train` covtype-shaped | the GPU job ran on {gpu.get('ran_on')}: "
                "no comparison | | | |"]
    return [
        f"| `gpuknn train` covtype-shaped ({tp['train_rows']:,} rows, sample "
        f"{tp['sample_size']:,}, {tp['test_rows']:,} test rows), whole job | GPU "
        f"{gpu['wall_s']:.2f} s, accuracy {gpu['test_accuracy']} | CPU path {cpu['wall_s']:.2f} "
        f"s, accuracy {cpu['test_accuracy']} | GPU {tp['job_gpu_over_cpu']:.2f}x | |",
        f"| predict 10,000 rows of that model | GPU {tp['gpu_predict_s'] * 1e3:.1f} ms | CPU "
        f"path {tp['cpu_predict_s'] * 1e3:.1f} ms | GPU {tp['predict_gpu_over_cpu']:.2f}x | |"]


if __name__ == "__main__":
    sys.exit(main())
