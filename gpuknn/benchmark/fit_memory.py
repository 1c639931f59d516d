"""Fit memory and load time, each measured in a fresh Python process so that every
baseline is clean.

- :func:`fit_memory`: a fresh Python process makes the data set and keeps it alive (the
  user's ``X``, as in a notebook), builds the engine once on a small slice (its libraries
  and thread pools load then, uncounted), then fits it on all the rows. Reported over the
  raw vectors' bytes (``X.nbytes``, float32): **held**, the resident memory (``VmRSS``)
  the fitted model adds and keeps; **peak**, the highest resident memory during the fit
  over the same baseline (``VmHWM`` after resetting it through ``/proc/self/clear_refs``,
  cross-checked by sampling ``VmRSS`` every 5 ms). Also what stays held after
  ``malloc_trim(0)`` (the rest was glibc's free lists) and, for gpuknn, the model's
  largest arrays.
- :func:`load_time`: ``KNNModel.load`` of a model saved as a directory against reading
  the bytes of its files from the page cache, in interleaved rounds in one fresh process.

:func:`in_fresh_process` runs either task in a new interpreter; the child enters through
this module's ``_child``, which looks the task up by name, so the tasks live here too.
"""

from __future__ import annotations

import gc
import json
import mmap
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpuknn.benchmark.memory_data import SEED, make_dataset
from gpuknn.benchmark.procmem import malloc_trim, proc_status, reset_peak

K = 10
# Rows of the warm-up build that loads an engine's libraries before the baseline: above
# gpuknn.search.partition.MIN_ROWS, so that k-means and its thread pools are warm too.
WARM_ROWS = 60_000
LOAD_ROUNDS = 5
CHILD_TIMEOUT_S = 3600.0
_CHILD = "import sys; from gpuknn.benchmark.fit_memory import _child; _child(*sys.argv[1:])"


# -- running a measurement in a fresh process --------------------------------------------------
def in_fresh_process(task: str, job: dict[str, Any], *,
                     timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Run ``task`` (``"fit"`` or ``"load"``) in a new Python process; its result.

    The child is ``python -c`` with this interpreter; it imports only what the task needs
    and writes its result as JSON to a file this process reads.

    Raises
    ------
    RuntimeError
        When the child fails or writes no result; the message ends with its stderr.
    """
    with tempfile.TemporaryDirectory(prefix="gpuknn-memory-") as folder:
        out = Path(folder) / "result.json"
        done = subprocess.run([sys.executable, "-c", _CHILD, task, json.dumps(job), str(out)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"the {task} measurement failed (exit {done.returncode}):\n"
                               f"{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def _child(task: str, job: str, out: str) -> None:
    """The child's entry point: run the task, write its result to ``out``."""
    tasks = {"fit": _fit_in_child, "load": _load_in_child}
    Path(out).write_text(json.dumps(tasks[task](**json.loads(job))))


# -- fit memory --------------------------------------------------------------------------------
def fit_memory(dataset: str, n: int, *, engine: str = "gpuknn", index: str = "faiss.Flat",
               settings: dict[str, Any] | None = None, save_to: str | Path | None = None,
               seed: int = SEED, timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """Resident memory a fitted engine holds, and the peak of its fit, in a fresh process.

    Parameters
    ----------
    dataset : {"sift-like", "covtype-like"}
        Made in the child by :func:`make_dataset` (float32) and kept alive.
    n : int
        Rows; gpuknn samples all of them (``sample_size=n``, ``k=10``, CPU, classifier).
    engine : {"gpuknn", "faiss"}
        gpuknn's ``KNN(...).fit(X, y)``, or raw faiss (``IndexFlatL2(d).add(X)`` for
        ``faiss.Flat``; IVF with ``settings``).
    index : {"faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ"}
    settings : dict, optional
        faiss IVF only: ``nlists``, ``nprobe``, ``pq_m``, as gpuknn chose them (the
        ``settings`` of a gpuknn result).
    save_to : path, optional
        gpuknn only: save the fitted model to this directory afterwards (not measured).

    Returns
    -------
    dict
        ``raw_bytes`` (``X.nbytes``), ``held_bytes``, ``held_trimmed_bytes`` (after
        ``malloc_trim``), ``peak_bytes`` (the largest of ``peak_hwm_bytes``, ``held_bytes`` and
        ``peak_sampled_bytes``), each also as ``*_ratio`` over ``raw_bytes``;
        ``baseline_rss_bytes``, ``build_s``, ``settings`` and, for gpuknn, ``arrays``
        (the model's largest arrays, :func:`model_arrays`).
    """
    job = {"dataset": dataset, "n": int(n), "engine": engine, "index": index,
           "settings": settings or {}, "save_to": None if save_to is None else str(save_to),
           "seed": int(seed)}
    return in_fresh_process("fit", job, timeout_s=timeout_s)


def _fit_in_child(*, dataset: str, n: int, engine: str, index: str,
                  settings: dict[str, Any], save_to: str | None, seed: int) -> dict[str, Any]:
    from gpuknn.benchmark.measure import PeakMemory  # noqa: PLC0415 - in the child only

    X, y = make_dataset(dataset, n, seed)
    _warm_up(engine, index, X[:WARM_ROWS], y[:WARM_ROWS], settings)
    before = proc_status()["VmRSS"]
    hwm_reset = reset_peak()
    with PeakMemory(collect=True) as sampled:
        began = time.perf_counter()
        built = _build(engine, index, X, y, settings)
        build_s = time.perf_counter() - began
    after = proc_status()
    malloc_trim()
    trimmed = proc_status()["VmRSS"]
    result = _fit_result(X, before, after, trimmed=trimmed, sampled=sampled,
                         hwm_reset=hwm_reset)
    result.update(dataset=dataset, n=int(n), dim=int(X.shape[1]), engine=engine, index=index,
                  build_s=build_s, settings=_settings(engine, built, settings))
    if engine == "gpuknn":
        result["arrays"] = model_arrays(built.model)
        if save_to is not None:
            built.model.save(save_to)
    return result


def _fit_result(X: np.ndarray, before: int, after: dict[str, int], *, trimmed: int,
                sampled: Any, hwm_reset: bool) -> dict[str, Any]:
    """The byte counts of a fit and their ratios to ``X.nbytes``."""
    held = after["VmRSS"] - before
    peak_hwm = after["VmHWM"] - before if hwm_reset else None
    peak_sampled = sampled.peak - before
    # What the fit still holds at the end was resident during it: the peak is never below
    # it, even where a 5 ms sampler missed the last page the garbage collector touched.
    counts = {"raw_bytes": int(X.nbytes), "baseline_rss_bytes": before,
              "held_bytes": held, "held_trimmed_bytes": trimmed - before,
              "peak_hwm_bytes": peak_hwm, "peak_sampled_bytes": peak_sampled,
              "peak_bytes": max(peak_sampled, peak_hwm or 0, held)}
    ratios = {key.replace("_bytes", "_ratio"): value / X.nbytes
              for key, value in counts.items()
              if value is not None and key not in ("raw_bytes", "baseline_rss_bytes")}
    return {**counts, **ratios}


def _warm_up(engine: str, index: str, X: np.ndarray, y: np.ndarray,
             settings: dict[str, Any]) -> None:
    """Build and search the same index once on a few rows: libraries, code pages and thread
    pools are resident before the baseline is read."""
    built = _build(engine, index, X, y, settings)
    queries = X[:16]
    if engine == "gpuknn":
        built.model.kneighbors(queries, K)
    else:
        built.search(queries, K)
    del built
    gc.collect()
    malloc_trim()


def _build(engine: str, index: str, X: np.ndarray, y: np.ndarray,
           settings: dict[str, Any]) -> Any:
    """A fitted ``gpuknn.KNN``, or a built :class:`gpuknn.benchmark.engines.Faiss`."""
    if engine == "gpuknn":
        from gpuknn import KNN  # noqa: PLC0415 - in the child only

        return KNN(k=K, predictor_type="classifier", sample_size=len(X), index_type=index,
                   device="cpu").fit(X, y)
    if engine == "faiss":
        from gpuknn.benchmark.engines import Faiss  # noqa: PLC0415 - in the child only

        peer = Faiss(index, settings)
        peer.build(X)
        return peer
    raise ValueError(f"unknown engine {engine!r}: gpuknn or faiss")


def _settings(engine: str, built: Any, given: dict[str, Any]) -> dict[str, Any]:
    """What an IVF index was built with (as ``gpuknn bench`` reports it), for the peer."""
    if engine != "gpuknn":
        return dict(given)
    model = built.model
    settings = {"nprobe": model.hyperparameters.faiss_index_nprobe,
                "pq_m": model.preparation.pq_m}
    nlist = getattr(getattr(model.index, "index", None), "nlist", None)
    if nlist is not None:
        settings["nlists"] = int(nlist)
    return settings


def model_arrays(model: Any, *, limit: int = 12, depth: int = 5) -> list[dict[str, Any]]:
    """The largest numpy arrays a model reaches through its attributes, each buffer once.

    Parameters
    ----------
    model : object
        Walked through ``vars()`` of gpuknn objects, dicts, lists and tuples.
    limit : int
        Arrays kept, largest first.
    depth : int
        Attribute levels followed.

    Returns
    -------
    list of dict
        ``path`` (``model.index.vectors``...), ``shape``, ``dtype``, ``nbytes`` of the
        buffer that owns the memory, and ``backing``: ``"own"`` (numpy's allocation),
        ``"mmap"`` (a memory-mapped file) or the type of the object lending the buffer.
    """
    found: dict[int, dict[str, Any]] = {}
    for path, array in _arrays(model, "model", depth, set()):
        owner = array
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        entry = {"path": path, "shape": list(array.shape), "dtype": str(array.dtype),
                 "nbytes": int(owner.nbytes), "backing": _backing(owner)}
        found.setdefault(id(owner), entry)
    return sorted(found.values(), key=lambda entry: -entry["nbytes"])[:limit]


def _backing(owner: np.ndarray) -> str:
    if isinstance(owner, np.memmap) or isinstance(owner.base, mmap.mmap):
        return "mmap"
    return "own" if owner.base is None else type(owner.base).__name__


def _arrays(value: Any, path: str, depth: int, seen: set[int]) -> Iterator[tuple[str, Any]]:
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        yield path, value
        return
    if depth == 0:
        return
    if isinstance(value, dict):
        items = [(f"{path}[{key!r}]", item) for key, item in value.items()]
    elif isinstance(value, (list, tuple)):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    elif type(value).__module__.startswith("gpuknn") and hasattr(value, "__dict__"):
        items = [(f"{path}.{name}", item) for name, item in vars(value).items()]
    else:
        return
    for child_path, child in items:
        yield from _arrays(child, child_path, depth - 1, seen)


# -- load time ---------------------------------------------------------------------------------
def load_time(model_dir: str | Path, *, rounds: int = LOAD_ROUNDS, seed: int = 0,
              timeout_s: float = CHILD_TIMEOUT_S) -> dict[str, Any]:
    """``KNNModel.load(model_dir, device="cpu")`` against reading the bytes of every file of
    the directory (``Path.read_bytes``) from the warm page cache, in a fresh process.

    Both are done once untimed (warm-up: imports, page cache), then ``rounds`` rounds time
    each once, in a seeded random order, after ``gc.collect()``. Each timed load is followed
    by one 1-row query, timed apart (``first_query_s``): a load that maps its files lazily
    pays for reading them there.

    Returns
    -------
    dict
        ``model_bytes`` (all files), ``load_s``, ``read_s``, ``first_query_s``: the samples
        summarised (:func:`gpuknn.benchmark.measure.summary`: median, q1, q3, spread);
        ``ratio``: load over read per round, summarised; ``ratio_with_query``: load plus
        first query over read.
    """
    job = {"model_dir": str(model_dir), "rounds": int(rounds), "seed": int(seed)}
    return in_fresh_process("load", job, timeout_s=timeout_s)


def _load_in_child(*, model_dir: str, rounds: int, seed: int) -> dict[str, Any]:
    from gpuknn.benchmark.measure import interleaved, summary  # noqa: PLC0415 - in the child only
    from gpuknn.model.knn_model import KNNModel  # noqa: PLC0415 - in the child only

    files = sorted(path for path in Path(model_dir).rglob("*") if path.is_file())
    query = None

    def read() -> float:
        began = time.perf_counter()
        for path in files:
            path.read_bytes()
        return time.perf_counter() - began

    def load() -> tuple[float, float]:
        nonlocal query
        began = time.perf_counter()
        model = KNNModel.load(model_dir, device="cpu")
        loaded = time.perf_counter()
        if query is None:
            query = np.zeros((1, model.feature_dim), dtype=np.float32)
        model.kneighbors(query, 1)
        return loaded - began, time.perf_counter() - loaded

    read(), load()
    samples = interleaved({"read": read, "load": load}, rounds, seed)
    load_s = [pair[0] for pair in samples["load"]]
    query_s = [pair[1] for pair in samples["load"]]
    return {"model_dir": model_dir, "files": [path.name for path in files],
            "model_bytes": sum(path.stat().st_size for path in files), "rounds": rounds,
            "load_s": summary(load_s), "read_s": summary(samples["read"]),
            "first_query_s": summary(query_s),
            "ratio": summary([a / b for a, b in zip(load_s, samples["read"], strict=True)]),
            "ratio_with_query": summary([(a + q) / b for a, q, b in
                                         zip(load_s, query_s, samples["read"], strict=True)])}
