"""How gpuknn's Ray paths scale: sampling (``KNN.fit([shard, ...])``) and batch transform
(Ray Data), with 1 and 2 Ray workers, against the single-process paths in the same run.

One local Ray cluster serves the whole run, started before the first timing (its start-up
is not counted; workers are warmed by one untimed round). Each round times every engine
once, in a fresh random order; the report gives each engine's median rows/s with its
interquartile spread, and the ratios the goals name, round by round:

- **Ray overhead**: a 1-worker Ray run against the single process given the same one
  core (``OMP_NUM_THREADS=1``, which gpuknn's thread pools honour, as Ray sets it for a
  1-CPU worker);
- **scaling**: 2 workers against 1 worker, on a 2-CPU cluster.

Engines and what they run:

- ``single, 1 core`` / ``single, all cores``: in this process, the host-side sampling of
  a training job (every file read, reservoir-sampled, merged) or ``serving.transform.run``;
- ``ray, N workers``: sampling over N shards (one task each, 1 CPU), or
  ``distributed.transform.run`` with N actors (1 CPU each);
- ``2 processes, no Ray``: the machine's own ceiling for two workers. A pool of two
  warm processes (``concurrent.futures``) samples the two shards, or transforms half of
  the files each with a model it loaded once: what two workers gain with no framework.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.machine import environment
from gpuknn.benchmark.measure import interleaved, paired_ratio, summary

CSV = "text/csv"
Timed = Callable[[], int]


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """Run with ``OMP_NUM_THREADS=count`` (None: unset), restoring it after."""
    before = os.environ.get("OMP_NUM_THREADS")
    if count is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = str(count)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before


def write_shards(X: np.ndarray, y: np.ndarray, out: Path, shards: int) -> list[Path]:
    """``shards`` directories of one CSV file each (label first), rows split evenly."""
    paths = []
    for index, rows in enumerate(np.array_split(np.arange(len(X)), shards)):
        directory = out / f"shard-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        table = np.column_stack([y[rows], X[rows]])
        np.savetxt(directory / f"part-{index}.csv", table, delimiter=",", fmt="%.6g")
        paths.append(directory)
    return paths


def sampling_engines(shards: list[Path], whole: Path, hp: Any) -> dict[str, Timed]:
    """The sampling engines; each returns the rows it read."""
    from gpuknn.distributed import parts  # noqa: PLC0415
    from gpuknn.distributed.fitting import fit_shards, merge_parts, sample_part  # noqa: PLC0415

    def single(cores: int | None) -> Timed:
        def run() -> int:
            with threads(cores):
                sample = sample_part(parts.Part(0, 1, str(whole)), "single", CSV,
                                     hp.to_strings())
                return merge_parts([sample], hp.sample_size, hp.seed).rows_seen
        return run

    def on_ray(sources: list[Path]) -> Timed:
        return lambda: fit_shards([str(s) for s in sources], CSV, hp, None, None).rows_seen

    def two_processes(pool: ProcessPoolExecutor) -> Timed:
        def run() -> int:
            futures = [pool.submit(_sample_shard, str(shard), hp.to_strings())
                       for shard in shards]
            samples = [future.result() for future in futures]
            for rank, sample in enumerate(samples):
                sample.rank, sample.hosts = rank, len(samples)
            return merge_parts(samples, hp.sample_size, hp.seed).rows_seen
        return run

    pool = _pool()
    return {"single, 1 core": single(1), "single, all cores": single(None),
            "ray, 1 worker": on_ray([whole]), "ray, 2 workers": on_ray(shards),
            "2 processes, no Ray": two_processes(pool)}


def _pool(initializer: Callable[..., None] | None = None, *args: Any) -> ProcessPoolExecutor:
    """Two warm worker processes on one thread each, as a 1-CPU Ray worker runs."""
    with threads(1):  # inherited by the workers when they start
        pool = ProcessPoolExecutor(2, initializer=initializer, initargs=args)
        list(pool.map(_nothing, range(2)))
    return pool


def _nothing(_: int) -> None:
    """Make a pool start its processes."""


def _sample_shard(shard: str, hyperparameters: dict[str, str]) -> Any:
    from gpuknn.distributed import parts  # noqa: PLC0415
    from gpuknn.distributed.fitting import sample_part  # noqa: PLC0415

    return sample_part(parts.Part(0, 1, shard), shard, CSV, hyperparameters)


_WORKER_MODEL: dict[str, Any] = {}


def _load_model(path: str) -> None:
    from gpuknn.model.knn_model import KNNModel  # noqa: PLC0415

    _WORKER_MODEL["model"] = KNNModel.load(path, device="cpu")


def _transform_one(source: Path, target: Path, job: Any) -> int:
    from gpuknn.serving import transform  # noqa: PLC0415

    return transform.transform_file(_WORKER_MODEL["model"], source, target, job)


def transform_engines(model_path: Path, inputs: Path, out: Path) -> dict[str, Timed]:
    """The transform engines; each writes fresh outputs and returns the rows answered."""
    from gpuknn.distributed import transform as ray_transform  # noqa: PLC0415
    from gpuknn.model.knn_model import KNNModel  # noqa: PLC0415
    from gpuknn.serving import transform  # noqa: PLC0415

    model = KNNModel.load(model_path, device="cpu")

    def job(name: str) -> Any:
        target = out / name.replace(" ", "").replace(",", "-")
        shutil.rmtree(target, ignore_errors=True)
        return transform.TransformJob(inputs, target, CSV)

    def single(cores: int | None, name: str) -> Timed:
        def run() -> int:
            with threads(cores):
                return transform.run(model, job(name), progress=False).rows
        return run

    def on_ray(workers: int, name: str) -> Timed:
        return lambda: ray_transform.run(model_path, job(name), workers=workers,
                                         device="cpu").rows

    def two_processes(pool: ProcessPoolExecutor) -> Timed:
        def run() -> int:
            work = job("procs-2")
            pairs = transform.input_files(work)
            futures = [pool.submit(_transform_one, source, target, work)
                       for source, target in pairs]
            return sum(future.result() for future in futures)
        return run

    pool = _pool(_load_model, str(model_path))
    return {"single, 1 core": single(1, "single-1"), "single, all cores": single(None, "single"),
            "ray, 1 worker": on_ray(1, "ray-1"), "ray, 2 workers": on_ray(2, "ray-2"),
            "2 processes, no Ray": two_processes(pool)}


def rounds(engines: dict[str, Timed], count: int, seed: int = 0,
           warm_up: int = 2) -> dict[str, list[float]]:
    """Rows/s of every engine, ``count`` interleaved rounds
    (:func:`gpuknn.benchmark.measure.interleaved`, 0.2 s before every call) after
    ``warm_up`` untimed ones (Ray starts its worker processes, which import gpuknn, in the
    first)."""
    for _ in range(warm_up):
        for run in engines.values():
            run()

    def rate(run: Timed) -> Callable[[], float]:
        def measured() -> float:
            began = time.perf_counter()
            rows = run()
            return rows / (time.perf_counter() - began)
        return measured

    return interleaved({name: rate(run) for name, run in engines.items()}, count, seed,
                       settle_s=0.2)


def report(rates: dict[str, list[float]]) -> dict[str, Any]:
    """Medians and spreads, and the two ratios of the goals (paired by round)."""
    single_1 = [1.0 / r for r in rates["single, 1 core"]]
    ray_1 = [1.0 / r for r in rates["ray, 1 worker"]]
    return {"rows_per_s": {name: summary(values) for name, values in rates.items()},
            "ray_1_worker_time_over_single_1_core": paired_ratio(ray_1, single_1),
            "ray_2_workers_over_1_worker": paired_ratio(rates["ray, 2 workers"],
                                                        rates["ray, 1 worker"]),
            "two_processes_over_single_1_core": paired_ratio(rates["2 processes, no Ray"],
                                                             rates["single, 1 core"])}


def run(n_rows: int, out: Path, *, count: int, sample_size: int, test_rows: int,
        model_rows: int, files: int = 8) -> dict[str, Any]:
    """The whole benchmark; returns the results (also written as JSON, Markdown, PNG).

    Sampling keeps ``sample_size`` of ``n_rows`` rows (as the covtype training job does),
    in ``2 * count`` rounds; the transform answers ``test_rows`` fresh rows in ``files``
    files with a ``faiss.Flat`` model of ``model_rows`` rows, in ``count`` rounds.
    """
    from gpuknn import KNN  # noqa: PLC0415
    from gpuknn.datasets.synthetic import covtype_like  # noqa: PLC0415
    from gpuknn.distributed.cluster import connected  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    X, y = covtype_like(n_rows + test_rows)
    shards = write_shards(X[:n_rows], y[:n_rows], data / "shards", 2)
    whole = data / "whole"
    whole.mkdir()
    for shard in shards:
        for file in shard.iterdir():
            (whole / file.name).symlink_to(file.absolute())
    queries = data / "queries"
    write_queries(X[n_rows:], queries, files)
    hp = KNN(k=10, predictor_type="classifier", sample_size=sample_size,
             feature_dim=X.shape[1]).hyperparameters
    KNN(k=10, predictor_type="classifier", sample_size=model_rows, device="cpu").fit(
        X[:n_rows], y[:n_rows]).fitted_model.save(data / "model")
    with connected("local", num_cpus=2):
        sampling = rounds(sampling_engines(shards, whole, hp), 2 * count)  # runs of ~1 s
        transforming = rounds(transform_engines(data / "model", queries, data / "out"), count,
                              warm_up=1)
    results = {"environment": environment(), "rows": n_rows, "features": int(X.shape[1]),
               "sample_size": sample_size, "test_rows": test_rows, "files": files,
               "model_rows": model_rows,
               "rounds": count, "sampling": report(sampling),
               "transform": report(transforming)}
    (out / "distributed.json").write_text(json.dumps(results, indent=2))
    (out / "distributed.md").write_text(markdown(results))
    plot(results, out / "distributed.png")
    shutil.rmtree(data, ignore_errors=True)
    return results


def write_queries(Q: np.ndarray, out: Path, files: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for index, rows in enumerate(np.array_split(np.arange(len(Q)), files)):
        np.savetxt(out / f"queries-{index:02d}.csv", Q[rows], delimiter=",", fmt="%.6g")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Ray scaling: {results['rows']:,} x {results['features']} covtype-like rows "
             f"(CSV), sample {results['sample_size']:,}; transform of {results['test_rows']:,} "
             f"rows in {results['files']} files by a {results['model_rows']:,}-row faiss.Flat "
             "model (k=10)", "",
             f"Interleaved rounds ({2 * results['rounds']} for sampling, {results['rounds']} "
             "for the transform) after warm-up ones; median rows/s (interquartile spread).",
             f"Machine: {results['environment'].get('cpu')}, "
             f"{results['environment'].get('cores')} cores.", ""]
    for job in ("sampling", "transform"):
        part = results[job]
        lines += [f"## {job}", "", "| engine | rows/s | spread |", "|---|---:|---:|"]
        lines += [f"| {name} | {stats['median']:,.0f} | {stats['spread']:.1%} |"
                  for name, stats in part["rows_per_s"].items()]
        overhead = part["ray_1_worker_time_over_single_1_core"]
        scaling = part["ray_2_workers_over_1_worker"]
        ceiling = part["two_processes_over_single_1_core"]
        lines += ["", f"- Ray, 1 worker, time / single process on 1 core: "
                      f"**{overhead['median']:.2f}x** (spread {overhead['spread']:.1%}; "
                      "goal at most 1.25x)",
                  f"- Ray, 2 workers / 1 worker, rows/s: **{scaling['median']:.2f}x** "
                  f"(spread {scaling['spread']:.1%}; goal at least 1.6x)",
                  f"- this machine's ceiling, 2 plain processes / 1 process on 1 core: "
                  f"**{ceiling['median']:.2f}x** (spread {ceiling['spread']:.1%})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Rows/s against Ray workers, with the single-process lines, for both jobs."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, job in zip(axes, ("sampling", "transform"), strict=True):
        rates = results[job]["rows_per_s"]
        workers = [1, 2]
        medians = [rates[f"ray, {n} worker{'s' if n > 1 else ''}"]["median"] for n in workers]
        axis.plot(workers, medians, "o-", label="Ray (1 CPU per worker)")
        axis.plot(workers, [medians[0] * n for n in workers], ":", color="grey",
                  label="linear from 1 worker")
        axis.plot([2], [rates["2 processes, no Ray"]["median"]], "s", color="black",
                  label="2 processes, no Ray")
        for name, style in (("single, 1 core", "--"), ("single, all cores", "-.")):
            axis.axhline(rates[name]["median"], linestyle=style, color="black", label=name)
        axis.set(title=job, xlabel="Ray workers", ylabel="rows/s", xticks=workers)
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
