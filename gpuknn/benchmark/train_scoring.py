"""Test scoring of ``bench/train_covtype.py`` looked at in this process: an independent
reference accuracy, and where gpuknn's exact search spends its time.

:func:`reference_accuracy` scores the test rows with faiss ``IndexFlatL2`` on a random
sample and a majority vote, independent of gpuknn, so that the job's accuracy has a
yardstick on the synthetic set. :func:`scoring_breakdown` times
:class:`~gpuknn.search.exact.ExactSearch` and its tile loop cut after each step (cProfile
of a job sees only the main thread, so this is where the worker threads' time goes), and
:func:`projection_band` measures how much of the base a 1-D projection bound would leave
to search, a property of the data.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gpuknn.benchmark.measure import interleaved, timer
from gpuknn.datasets.synthetic import N_CLASSES, SEED


def reference_accuracy(data: dict[str, Any], sample_size: int, k: int = 10) -> dict[str, Any]:
    """faiss ``IndexFlatL2`` on a random sample, majority vote (ties to the smaller label).

    Parameters
    ----------
    data : dict
        What :func:`gpuknn.benchmark.train_jobs.prepare` returns (``X``, ``y``,
        ``n_train``).
    sample_size : int
        Rows of the random sample of the train rows.
    k : int
        Neighbours voting.

    Returns
    -------
    dict
        ``accuracy`` on the test rows, the engine, the sample size, ``k`` and the seconds
        taken; ``{"skipped": ...}`` without faiss.
    """
    try:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import faiss  # noqa: PLC0415  (optional)
    except ImportError:
        return {"skipped": "faiss is not installed"}
    started = time.perf_counter()
    n_train = data["n_train"]
    X, y = data["X"], data["y"]
    rows = np.random.default_rng([SEED, 1]).choice(n_train, sample_size, replace=False)
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(np.ascontiguousarray(X[rows], dtype=np.float32))
    _, neighbours = index.search(np.ascontiguousarray(X[n_train:], dtype=np.float32), k)
    labels = y[rows][neighbours].astype(np.int64)
    counts = np.zeros((len(labels), N_CLASSES), dtype=np.int64)
    np.add.at(counts, (np.arange(len(labels))[:, None], labels), 1)
    accuracy = float(np.mean(counts.argmax(axis=1) == y[n_train:]))
    return {"accuracy": round(accuracy, 4), "engine": f"faiss {faiss.__version__} IndexFlatL2",
            "sample_size": sample_size, "k": k, "seconds": round(time.perf_counter() - started, 1)}


def scoring_breakdown(data: dict[str, Any], sample_size: int, n_queries: int,
                      k: int = 10, repeats: int = 3) -> dict[str, Any]:
    """Time gpuknn's exact search and its parts on the first test rows, in this process.

    Same structure as :class:`gpuknn.search.exact.ExactSearch` on a CPU: 256-query chunks,
    one per core, single-threaded BLAS, 16 MB score tiles. Each variant is timed
    ``repeats`` times in interleaved rounds (best kept) and scaled to the whole test
    channel.

    Parameters
    ----------
    data : dict
        What :func:`gpuknn.benchmark.train_jobs.prepare` returns.
    sample_size : int
        Rows of the random base sample (the same sample as :func:`reference_accuracy`).
    n_queries : int
        The first test rows to search.
    k : int
        Neighbours per query.
    repeats : int
        Interleaved rounds.

    Returns
    -------
    dict
        The sizes, the workers, the chunk and tile widths, each variant's best and median
        seconds, scaled time and wall ns per score, and the projection band fraction.
    """
    from gpuknn import _backend  # noqa: PLC0415  (the search is imported when measured)
    from gpuknn.search import exact  # noqa: PLC0415

    n_train = data["n_train"]
    X = data["X"]
    rows = np.random.default_rng([SEED, 1]).choice(n_train, sample_size, replace=False)
    base = np.ascontiguousarray(X[rows], dtype=np.float32)
    queries = np.ascontiguousarray(X[n_train:n_train + n_queries], dtype=np.float32)
    search = exact.ExactSearch(base, "L2")
    scale = (len(data["y"]) - n_train) / len(queries)
    times = _interleaved(_variants(search, queries, k), repeats)
    results = []
    for name, seconds in times.items():
        best = min(seconds)
        results.append({"variant": name, "seconds": round(best, 3),
                        "median_s": round(statistics.median(seconds), 3),
                        "whole_test_channel_s": round(best * scale, 1),
                        "ns_per_score": round(best * 1e9 / (len(queries) * sample_size), 3)})
    distances, _ = search.search(queries, k)
    return {"queries": len(queries), "sample_size": sample_size, "k": k,
            "workers": _backend.usable_cores(), "query_chunk": exact.QUERY_CHUNK,
            "tile_columns": search._block_width(exact.QUERY_CHUNK), "variants": results,
            "projection_band_fraction": projection_band(base, queries, distances[:, -1],
                                                        exact.QUERY_CHUNK)}


def _variants(search: Any, queries: np.ndarray, k: int) -> dict[str, Callable[[], Any]]:
    """The whole search and its tile loop cut after each step, by name."""
    return {
        "gpuknn ExactSearch.search (as in the job)": lambda: search.search(queries, k),
        "GEMM only (the same tiles)": lambda: _tiles(search, queries, k, "gemm"),
        "GEMM + ‖x‖² add": lambda: _tiles(search, queries, k, "norms"),
        "GEMM + ‖x‖² add + group minima (select_k's first pass)":
            lambda: _tiles(search, queries, k, "minima"),
        "GEMM + ‖x‖² add + select_k (no final merge)":
            lambda: _tiles(search, queries, k, "select"),
        "GEMM with ‖x‖² folded in (K=55, base stored d-major)":
            lambda: _tiles(search, queries, k, "folded"),
    }


def _interleaved(variants: dict[str, Callable[[], Any]], repeats: int,
                 ) -> dict[str, list[float]]:
    """Seconds of each variant in ``repeats`` rounds, each round in a shuffled order
    (:func:`gpuknn.benchmark.measure.interleaved`), with 0.2 s before every call so that
    the BLAS threads of the previous call go idle."""
    return interleaved({name: timer(call) for name, call in variants.items()}, repeats,
                       seed=[SEED, 2], settle_s=0.2)


def _tiles(search: Any, queries: np.ndarray, k: int, part: str) -> None:
    """The tile loop of ``ExactSearch._candidates``, cut after ``part``, on every core."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    from threadpoolctl import threadpool_limits  # noqa: PLC0415

    from gpuknn import _backend  # noqa: PLC0415
    from gpuknn.search import exact, topk  # noqa: PLC0415

    chunk = exact.QUERY_CHUNK
    width = search._block_width(chunk)
    norms = search.base.sq_norms
    folded = (np.ascontiguousarray(np.vstack([search.base.scaled(slice(None)).T,
                                              norms[None, :]]))
              if part == "folded" else None)

    def run(start: int) -> None:
        q = queries[start:start + chunk]
        if folded is not None:
            q = np.hstack([q, np.ones((len(q), 1), np.float32)])
        buffer = np.empty((len(q), width), np.float32)
        for begin in range(0, search.ntotal, width):
            end = min(begin + width, search.ntotal)
            out = buffer[:, :end - begin]
            if folded is not None:
                np.matmul(q, folded[:, begin:end], out=out)
                continue
            np.matmul(q, search.base.scaled(slice(begin, end)).T, out=out)
            if part == "norms":
                out += norms[begin:end]
            elif part == "minima":
                out += norms[begin:end]
                group = topk._group_size(end - begin, k)
                n_groups = (end - begin) // group
                out[:, :group * n_groups].reshape(len(q), group, n_groups).min(axis=1)
            elif part == "select":
                out += norms[begin:end]
                topk.select_k(out, k)

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(_backend.usable_cores()) as pool:
        list(pool.map(run, range(0, len(queries), chunk)))


def projection_band(base: np.ndarray, queries: np.ndarray, kth: np.ndarray,
                    chunk: int) -> float:
    """Mean fraction of the base a 1-D projection bound leaves to search (a data property).

    ``|<q - x, u>| <= |q - x|`` for a unit ``u`` (here the top principal axis): with the
    queries sorted by projection and cut into chunks, only base rows whose projection lies
    within the chunk's range widened by its largest k-th distance can be neighbours.

    Parameters
    ----------
    base : numpy.ndarray
        The base rows.
    queries : numpy.ndarray
        The query rows.
    kth : numpy.ndarray
        Each query's k-th smallest distance.
    chunk : int
        Queries per chunk.

    Returns
    -------
    float
        The mean fraction over the chunks, rounded to 3 digits.
    """
    centred = base[:: max(1, len(base) // 20_000)] - base.mean(axis=0)
    axis = np.linalg.eigh(np.cov(centred.T))[1][:, -1].astype(np.float32)
    projected = np.sort(base @ axis)
    query_projection = queries @ axis
    order = np.argsort(query_projection)
    kth = np.asarray(kth, dtype=np.float64)
    fractions = []
    for start in range(0, len(queries), chunk):
        part = order[start:start + chunk]
        radius = kth[part].max()
        low = np.searchsorted(projected, query_projection[part].min() - radius)
        high = np.searchsorted(projected, query_projection[part].max() + radius, "right")
        fractions.append((high - low) / len(base))
    return round(float(np.mean(fractions)), 3)
