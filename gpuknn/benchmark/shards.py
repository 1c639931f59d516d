"""Sharded and streamed search against the whole index: what the merge and the bus cost.

The index is built once through :class:`gpuknn.KNN` (the product's defaults), then
split with :meth:`gpuknn.KNNModel.sharded`. The whole model and each sharded one answer
the same queries in interleaved rounds (:func:`gpuknn.benchmark.measure.interleaved`);
each time is a full ``kneighbors`` call. The answers are compared once, bit for bit.

On a GPU, :func:`gpu_streaming` times a base streamed from host memory against the same
base in device memory, beside the bus's floor, and :func:`gpu_devices` the throughput
against the number of GPUs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpuknn import KNN
from gpuknn.benchmark.measure import interleaved

GOAL_RATIO = 1.1  # N shards on the same cores: at most 1.1x the whole index's time
STREAM_GOAL_RATIO = 1.5  # a streamed exact search against an in-memory one, same GPU


def sharded_against_whole(X: np.ndarray, queries: np.ndarray, index_type: str, *,
                          k: int = 10, shard_counts: Sequence[int] = (2, 4),
                          rounds: int = 11, seed: int = 0) -> dict[str, Any]:
    """Median time (and spread) of ``kneighbors`` for the whole index and each shard count.

    Parameters
    ----------
    X : ndarray of shape (n, d), float32
    queries : ndarray of shape (m, d), float32
    index_type : {"faiss.Flat", "faiss.IVFFlat", "faiss.IVFPQ"}
    k : int
    shard_counts : sequence of int
    rounds : int
        Interleaved rounds (each engine once per round, in a fresh random order).

    Returns
    -------
    dict
        ``build_s``, and per engine ``median_s``, ``spread_s`` (max - min),
        ``queries_per_s``, ``ratio`` (median over the whole index's) and ``identical``.
    """
    started = time.perf_counter()
    model = KNN(k=k, predictor_type="regressor", sample_size=len(X), feature_dim=X.shape[1],
                index_type=index_type, device="cpu").fit(X, np.zeros(len(X), np.float32)).model
    build_s = time.perf_counter() - started
    models = {"whole": model, **{f"{n} shards": model.sharded(n) for n in shard_counts}}
    expected = model.kneighbors(queries, k)
    identical = {name: all(np.array_equal(a, b) for a, b in
                           zip(each.kneighbors(queries, k), expected, strict=True))
                 for name, each in models.items()}

    samples = interleaved({name: (lambda each=each: _timed(lambda: each.kneighbors(queries, k)))
                           for name, each in models.items()}, rounds, seed)
    whole = float(np.median(samples["whole"]))
    engines = {}
    for name, times in samples.items():
        median = float(np.median(times))
        engines[name] = {"median_s": median, "spread_s": float(np.ptp(times)),
                         "queries_per_s": len(queries) / median, "ratio": median / whole,
                         "identical": identical[name]}
    for each in models.values():
        getattr(each.index, "close", lambda: None)()
    return {"index_type": index_type, "rows": len(X), "dim": int(X.shape[1]),
            "queries": len(queries), "k": k, "rounds": rounds, "build_s": build_s,
            "goal_ratio": GOAL_RATIO, "engines": engines}


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, one row per index and engine."""
    lines = ["| index | rows x dim | queries | engine | median s (spread) | queries/s | "
             "ratio to whole | identical |", "|---|---|---:|---|---:|---:|---:|---|"]
    for result in results:
        for name, engine in result["engines"].items():
            lines.append(f"| {result['index_type']} | {result['rows']:,} x {result['dim']} | "
                         f"{result['queries']:,} | {name} | {engine['median_s']:.3f} "
                         f"({engine['spread_s']:.3f}) | {engine['queries_per_s']:,.0f} | "
                         f"{engine['ratio']:.2f}x | {engine['identical']} |")
    return "\n".join(lines)


def gpu_streaming(X: np.ndarray, queries: np.ndarray, *, k: int = 10, segments: int = 4,
                  rounds: int = 7, seed: int = 0) -> dict[str, Any]:
    """On GPU 0: exact search with the base in device memory against the same base
    streamed from host memory in ``segments`` (goal: within 1.5x), and the bus's floor:
    the time to copy the base once from pinned host memory.

    Returns
    -------
    dict
        ``in_memory_s``, ``streamed_s`` (medians), ``ratio``, ``copy_s`` (median of the
        base's pinned host-to-device copy), ``bus_gb_per_s``, ``identical``.
    """
    from gpuknn import _backend  # noqa: PLC0415
    from gpuknn.search.exact import ExactSearch  # noqa: PLC0415
    from gpuknn.search.streamed import StreamedSearch  # noqa: PLC0415

    cupy = _backend.array_module("gpu")
    whole = ExactSearch(cupy.asarray(X), "L2", xp=cupy)
    streamed = StreamedSearch(X, "L2", xp=cupy, segment_rows=-(-len(X) // segments),
                              device=0)
    pinned = np.frombuffer(cupy.cuda.alloc_pinned_memory(X.nbytes), np.float32,
                           X.size).reshape(X.shape)
    np.copyto(pinned, X)
    target = cupy.empty(X.shape, dtype=cupy.float32)

    def in_memory() -> tuple[np.ndarray, np.ndarray]:
        found = whole.search(queries, k)
        return _backend.to_host(found[0]), _backend.to_host(found[1])

    def copy() -> float:
        cupy.cuda.Device().synchronize()
        begin = time.perf_counter()
        target.set(pinned)
        cupy.cuda.Device().synchronize()
        return time.perf_counter() - begin

    identical = all(np.array_equal(a, b) for a, b in
                    zip(streamed.search(queries, k), in_memory(), strict=True))
    samples = interleaved({"in memory": lambda: _timed(in_memory),
                           "streamed": lambda: _timed(lambda: streamed.search(queries, k)),
                           "copy": copy}, rounds, seed)
    medians = {name: float(np.median(times)) for name, times in samples.items()}
    streamed.close()
    return {"rows": len(X), "dim": int(X.shape[1]), "queries": len(queries), "k": k,
            "segments": segments, "rounds": rounds, "in_memory_s": medians["in memory"],
            "streamed_s": medians["streamed"],
            "ratio": medians["streamed"] / medians["in memory"], "copy_s": medians["copy"],
            "bus_gb_per_s": X.nbytes / medians["copy"] / 1e9, "identical": identical,
            "goal_ratio": STREAM_GOAL_RATIO}


def gpu_devices(X: np.ndarray, queries: np.ndarray, *, k: int = 10, rounds: int = 5,
                seed: int = 0) -> list[dict[str, Any]]:
    """Exact search split over the first 1, 2, ... GPUs: queries/s against device count."""
    from gpuknn import _backend  # noqa: PLC0415
    from gpuknn.search.exact import ExactSearch  # noqa: PLC0415
    from gpuknn.search.shards import shard_index  # noqa: PLC0415

    whole = ExactSearch(X, "L2", partition="never")
    split = {count: shard_index(whole, count, devices=tuple(range(count)))
             for count in range(1, _backend.gpu_count() + 1)}
    samples = interleaved({count: (lambda s=s: _timed(lambda: s.search(queries, k)))
                           for count, s in split.items()}, rounds, seed)
    return [{"gpus": count, "median_s": float(np.median(times)),
             "queries_per_s": len(queries) / float(np.median(times))}
            for count, times in samples.items()]


def _timed(call: Any) -> float:
    begin = time.perf_counter()
    call()
    return time.perf_counter() - begin
