"""Sharded search against the whole index on the same cores: what the merge costs.

The index is built once through :class:`gpuknn.KNN` (the product's defaults), then
split with :meth:`gpuknn.KNNModel.sharded`. The whole model and each sharded one answer
the same queries in interleaved rounds (:func:`gpuknn.benchmark.memory.interleaved`);
each time is a full ``kneighbors`` call. The answers are compared once, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpuknn import KNN
from gpuknn.benchmark.memory import interleaved

GOAL_RATIO = 1.1  # N shards on the same cores: at most 1.1x the whole index's time


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

    def timed(each: Any) -> float:
        begin = time.perf_counter()
        each.kneighbors(queries, k)
        return time.perf_counter() - begin

    samples = interleaved({name: (lambda each=each: timed(each)) for name, each in
                           models.items()}, rounds, seed)
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
