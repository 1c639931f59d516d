"""The GPU check's benchmarks (``bench/gpu_bench.py``, run by ``bench/gpu_check.sh``), each
beside its measured floor and the CPU path.

CuPy is reached only through :mod:`gpuknn._backend` (``array_module("gpu")``), which the
caller passes in as ``cp``. Every GPU time is the best of ``repeats`` calls after one
warm-up, synchronised around every call (:class:`Timer`, on
:func:`~gpuknn.benchmark.measure.interleaved`).

- :func:`floors`: the card's FP32 GEMM rate and its memory bandwidth;
- :func:`search`: ``ExactSearch`` on the GPU against the GEMM floor, the CPU path and
  faiss-gpu (:func:`faiss_gpu_flat`), with the neighbour ids compared;
- :func:`fjlt`: the fused kernel's bytes moved over time, against the bandwidth;
- :func:`vote_mean`: the vote and mean kernels against the search of as many queries;
- :func:`train_and_predict`: a whole ``gpuknn train`` job and a predict of its model, on
  the GPU and on the CPU path (the job of :mod:`gpuknn.benchmark.train_covtype`);
- :func:`run` all of them, :func:`render` the report as Markdown.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gpuknn import KNNModel, kernels
from gpuknn.benchmark.machine import machine
from gpuknn.benchmark.measure import interleaved
from gpuknn.benchmark.train_covtype import FULL_SIZES, QUICK_SIZES
from gpuknn.benchmark.train_jobs import gpuknn_command, parse_job, prepare, run_job
from gpuknn.model.reduction import FJLT
from gpuknn.search.exact import ExactSearch
from gpuknn.search.faiss_gpu import faiss_has_gpu
from gpuknn.search.faiss_index import require_faiss

# The goals of issue 6 (bench/gpu_bench.py records them with every report).
TARGETS = {"search_x_floor": 2.0, "search_gpu_over_cpu": 50.0, "fjlt_bandwidth_share": 0.5,
           "vote_share_of_search": 0.05}
CPU_SAMPLE_QUERIES = 200
PREDICT_ROWS = 10_000


def best_seconds(function: Callable[[], Any], repeats: int,
                 synchronize: Callable[[], Any] = lambda: None) -> float:
    """Best wall time of ``function`` over ``repeats`` calls, ``synchronize`` after each."""
    def timed() -> float:
        start = time.perf_counter()
        function()
        synchronize()
        return time.perf_counter() - start

    return min(interleaved({"call": timed}, repeats, seed=0)["call"])


class Timer:
    """Best wall time of a GPU call, synchronised, after a warm-up."""

    def __init__(self, cp: ModuleType, repeats: int):
        self.cp, self.repeats = cp, repeats

    def synchronize(self) -> None:
        """Wait for the current device's work."""
        self.cp.cuda.Device().synchronize()

    def best(self, function: Callable[[], Any]) -> float:
        """Seconds of the fastest of :attr:`repeats` calls, after one untimed call."""
        function()
        self.synchronize()
        return best_seconds(function, self.repeats, self.synchronize)


def environment(cp: ModuleType, host: dict[str, Any]) -> dict[str, Any]:
    """The card, driver, CUDA runtime and CuPy, with the date and Python of ``host``
    (a :func:`~gpuknn.benchmark.machine.machine` record)."""
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return {"gpu": name.decode() if isinstance(name, bytes) else name,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "driver": cp.cuda.runtime.driverGetVersion(),
            "runtime": cp.cuda.runtime.runtimeGetVersion(), "cupy": cp.__version__,
            "numpy": np.__version__, "python": host["python"], "date_utc": host["date_utc"]}


def floors(cp: ModuleType, timer: Timer) -> dict[str, float]:
    """FP32 GEMM TFLOP/s (8192^3 matmul) and GB/s of a 1 GiB copy (read + written)."""
    n = 8192
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    gemm_s = timer.best(lambda: a @ b)
    block = cp.empty(1 << 28, dtype=cp.float32)  # 1 GiB
    copy_s = timer.best(block.copy)
    return {"fp32_gemm_tflops": 2 * n**3 / gemm_s / 1e12,
            "bandwidth_gb_s": 2 * block.nbytes / copy_s / 1e9}


def search(cp: ModuleType, timer: Timer, sizes: dict[str, int],
           floor: dict[str, float]) -> dict[str, Any]:
    """Exact search k=10 on the GPU against the GEMM floor, the CPU path and faiss-gpu."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((sizes["base"], sizes["dim"]), dtype=np.float32)
    queries = rng.standard_normal((sizes["queries"], sizes["dim"]), dtype=np.float32)
    gpu = ExactSearch(cp.asarray(base), "L2", xp=cp)
    gpu_queries = cp.asarray(queries)
    gpu_s = timer.best(lambda: gpu.search(gpu_queries, 10))
    cpu = ExactSearch(base, "L2", partition="never")  # Gaussian data: brute force anyway
    sample = queries[:CPU_SAMPLE_QUERIES]
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


def fjlt(cp: ModuleType, timer: Timer, rows: int, floor: dict[str, float]) -> dict[str, Any]:
    """The fused FJLT kernel, ``rows`` x 1024 to 128: GB/s, share of bandwidth, error."""
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


def vote_mean(cp: ModuleType, timer: Timer, queries: int,
              search_result: dict[str, Any]) -> dict[str, Any]:
    """The vote and mean kernels on ``queries`` x k=100, as shares of as many queries' search."""
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
    """The whole ``gpuknn train`` (File mode) of :mod:`gpuknn.benchmark.train_covtype`'s
    job and a 10,000-row predict, per device (the CPU job runs with
    ``CUDA_VISIBLE_DEVICES=""``)."""
    n_train, n_test, sample = QUICK_SIZES if quick else FULL_SIZES
    result: dict[str, Any] = {"train_rows": n_train, "test_rows": n_test,
                              "sample_size": sample}
    with tempfile.TemporaryDirectory(prefix="gpuknn-gpu-bench-") as scratch:
        data = prepare(Path(scratch), n_train, n_test, sample)
        root, command = data["file_root"], gpuknn_command()
        queries = np.ascontiguousarray(data["X"][n_train:][:PREDICT_ROWS], dtype=np.float32)
        for device in devices:
            with _visible_devices("" if device == "cpu" else None):
                job = run_job(command, root, "File", 0, Path(scratch) / f"{device}.log")
            parsed = parse_job(job)
            result[f"{device}_job"] = {key: parsed.get(key) for key in (
                "exit_code", "wall_s", "throughput_metric", "test_accuracy", "log_tail")}
            result[f"{device}_job"]["ran_on"] = ran_on(job.output)
            if job.exit_code == 0:
                result[f"{device}_predict_s"] = _best_predict(root / "model", device, queries,
                                                              repeats)
    if "cpu_predict_s" in result and "gpu_predict_s" in result:
        cpu, gpu = result["cpu_job"], result["gpu_job"]
        result["job_gpu_over_cpu"] = cpu["wall_s"] / gpu["wall_s"]
        result["predict_gpu_over_cpu"] = result["cpu_predict_s"] / result["gpu_predict_s"]
    return result


def ran_on(output: str) -> str | None:
    """The device a ``gpuknn train`` job says it ran on (``"; device cpu|gpu"``), or None."""
    found = re.search(r"; device (cpu|gpu)", output)  # train.py's log line
    return found.group(1) if found else None


@contextlib.contextmanager
def _visible_devices(value: str | None) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES`` set to ``value`` within the block (None: left alone)."""
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:  # "": the job's CuPy sees no GPU, gpuknn train takes the CPU path
        os.environ["CUDA_VISIBLE_DEVICES"] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _best_predict(model_dir: Path, device: str, queries: np.ndarray, repeats: int) -> float:
    model = KNNModel.load(model_dir, device=device)
    model.predict(queries[:10])
    # numpy in, numpy out: includes the copies to and from a GPU
    return best_seconds(lambda: model.predict(queries), repeats)


def run(cp: ModuleType, sizes: dict[str, int], targets: dict[str, float], *, quick: bool,
        repeats: int) -> dict[str, Any]:
    """Every measurement of this module, in order, as one report for :func:`render`.

    Parameters
    ----------
    cp : module
        CuPy, from ``gpuknn._backend.array_module("gpu")``.
    sizes : dict
        ``base``, ``queries``, ``dim`` (the search) and ``rows`` (fjlt, vote, mean).
    targets : dict
        The goals (as :data:`TARGETS`), recorded and read by :func:`render`.
    """
    host = machine()
    report: dict[str, Any] = {"environment": environment(cp, host), "sizes": sizes,
                              "targets": targets, "machine": host}
    timer = Timer(cp, repeats)
    report["floors"] = floors(cp, timer)
    report["search"] = search(cp, timer, sizes, report["floors"])
    report["fjlt"] = fjlt(cp, timer, sizes["rows"], report["floors"])
    report["vote_mean"] = vote_mean(cp, timer, sizes["rows"], report["search"])
    report["train_predict"] = train_and_predict(quick, repeats)
    return report


def render(report: dict[str, Any]) -> str:
    """The report of :func:`run` as Markdown: a table of results, floors, peers, goals
    (the report's ``targets``, :data:`TARGETS` where it has none)."""
    env, fl, se, fj, vm = (report[key] for key in ("environment", "floors", "search", "fjlt",
                                                   "vote_mean"))
    sizes, goal = report["sizes"], report.get("targets", TARGETS)
    return "\n".join([
        f"# GPU benchmarks: {env['gpu']} (sm {env['compute_capability']}, "
        f"{env['memory_gib']} GiB), driver {env['driver']}, CUDA runtime {env['runtime']}, "
        f"CuPy {env['cupy']}; {env['date_utc']}", "",
        f"Floors: FP32 GEMM {fl['fp32_gemm_tflops']:.1f} TFLOP/s, memory "
        f"{fl['bandwidth_gb_s']:.0f} GB/s (read + write). `python bench/gpu_bench.py`.", "",
        "| measure | result | floor or peer | ratio | target |", "|---|---:|---:|---:|---:|",
        f"| exact search {sizes['base']:,} x {sizes['dim']}, {sizes['queries']:,} queries, k=10 "
        f"| {se['gpu_s'] * 1e3:.1f} ms | GEMM floor {se['gemm_floor_s'] * 1e3:.1f} ms | "
        f"{se['x_floor']:.2f}x floor | <= {goal['search_x_floor']:g}x |",
        f"| the same on the CPU path (scaled from {CPU_SAMPLE_QUERIES} queries) | "
        f"{se['cpu_s_scaled']:.1f} s | | GPU {se['gpu_over_cpu']:.0f}x faster | "
        f">= {goal['search_gpu_over_cpu']:g}x |",
        f"| fjlt {sizes['rows']:,} x 1024 -> 128 | {fj['seconds'] * 1e3:.2f} ms, "
        f"{fj['gb_s']:.0f} GB/s | {fl['bandwidth_gb_s']:.0f} GB/s | "
        f"{fj['bandwidth_share']:.0%} of bandwidth | >= {goal['fjlt_bandwidth_share']:.0%} |",
        f"| vote, {sizes['rows']:,} queries x k=100 | {vm['vote_s'] * 1e3:.2f} ms | search "
        f"{vm['search_s_same_queries'] * 1e3:.0f} ms | {vm['vote_share_of_search']:.2%} | "
        f"< {goal['vote_share_of_search']:.0%} |",
        f"| mean, the same | {vm['mean_s'] * 1e3:.2f} ms | | {vm['mean_share_of_search']:.2%} "
        f"| < {goal['vote_share_of_search']:.0%} |",
        *_train_predict_rows(report["train_predict"]), "",
        _faiss_gpu_row(se),
        f"GPU and CPU neighbour ids equal on {se['ids_equal_share']:.1%} of "
        f"{CPU_SAMPLE_QUERIES} query rows; fjlt kernel vs numpy twin, max abs error "
        f"{fj['max_abs_error_vs_twin']:.2e}.", ""])


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
        f"| predict {PREDICT_ROWS:,} rows of that model | GPU {tp['gpu_predict_s'] * 1e3:.1f} ms "
        f"| CPU path {tp['cpu_predict_s'] * 1e3:.1f} ms | GPU {tp['predict_gpu_over_cpu']:.2f}x "
        "| |"]
